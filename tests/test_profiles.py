"""The Snakemake profiles stay in step with the workflow (quick; the Slurm run itself: test_slurm.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from helpers import REPO

SLURM = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def workflow_rules() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--list-rules",
                          "--workflow-profile", "none"], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_slurm_profile_sizes_every_rule_and_only_real_ones(workflow_rules):
    # A renamed rule would silently fall back to the defaults on the cluster.
    assert set(SLURM["set-resources"]) == workflow_rules - {"all"}


def test_slurm_profile_settings():
    assert SLURM["executor"] == "slurm"
    assert SLURM["slurm-status-command"] == "squeue"  # sacct fails where Slurm accounting is off
    defaults = SLURM["default-resources"]
    assert {"runtime", "mem_mb", "cpus_per_task"} <= set(defaults)
    # Plugin issue #459: `tasks` turns into --ntasks-per-gpu for GPU jobs, which then run N times.
    assert not {"tasks", "tasks_per_gpu", "gpu", "gres"} & set(defaults)
    for rule, resources in SLURM["set-resources"].items():
        assert not {"gpu", "gres"} <= set(resources), f"{rule}: never both gpu and gres (plugin issue #373)"
        assert "tasks" not in resources, rule


def test_default_profile_limits_gpu_jobs_to_the_gpus():
    assert DEFAULT["resources"]["gpu"] >= 1
    assert "executor" not in DEFAULT


def test_a_key_written_twice_in_the_profile_in_use_is_refused_naming_it(tmp_path):
    """A second `default-resources:` appended to an edited copy of the Slurm profile: Snakemake would keep
    only the last (the runtime here) and drop the partition and memory of the first without a word. The
    workflow refuses to start, naming the profile file, the key and both lines (counted here); the shipped
    profiles have no such key."""
    from helpers import run_snakemake, tiny_config
    from finetune.userconfig import duplicate_keys, profile_files

    for name in ("slurm", "default"):
        assert duplicate_keys(REPO / "profiles" / name / "config.yaml") == [], name
    profile = tmp_path / "myslurm"
    profile.mkdir()
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text() + "default-resources:\n  runtime: 60\n"
    (profile / "config.yaml").write_text(text)
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("default-resources:")]
    assert len(lines) == 2
    config = tiny_config(tmp_path / "run")
    for option in (["--workflow-profile", str(profile)], [f"--workflow-profile={profile}"], ["--profile", str(profile)]):
        result = run_snakemake(tmp_path / "run", config, "-n", *option, check=False, timeout=120)
        assert result.returncode != 0, result.stdout
        assert (f"{profile / 'config.yaml'}: default-resources is written twice (lines {lines[0]} and {lines[1]})"
                in result.stdout), (option, result.stdout[-2000:])
    assert not (tmp_path / "run" / "results").exists()
    # The profile's path relative to where snakemake is started, the run in another --directory: still found.
    relative = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                               "run", "--cores", "2", "--configfile", str(config), "-n", "--workflow-profile",
                               "myslurm"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120)
    assert relative.returncode != 0, relative.stdout
    assert "myslurm/config.yaml: default-resources is written twice" in relative.stdout, relative.stdout[-2000:]
    # Which profile files a command line uses, as Snakemake picks them.
    assert profile_files(["snakemake", "-n"], {}, REPO) == [REPO / "profiles" / "default" / "config.yaml"]
    assert profile_files(["snakemake", "--workflow-profile", "none"], {}, REPO) == []
    assert profile_files(["snakemake", "--workflow-profile", "none"], {"SNAKEMAKE_PROFILE": str(profile)}, REPO) == [
        profile / "config.yaml"]
    assert profile_files(["snakemake", "--workflow-profile", "myslurm"], {}, REPO, tmp_path) == [profile / "config.yaml"]
    assert profile_files(["snakemake", "--profile", "myslurm/config.yaml", "--workflow-profile=none"], {}, REPO,
                         tmp_path) == [profile / "config.yaml"]
    # A workflow profile named: profiles/<name> where snakemake started, else beside the Snakefile.
    assert profile_files(["snakemake", "--workflow-profile", "slurm"], {}, REPO, tmp_path) == [
        REPO / "profiles" / "slurm" / "config.yaml"]
    (tmp_path / "profiles" / "slurm").mkdir(parents=True)
    (tmp_path / "profiles" / "slurm" / "config.yaml").write_text("jobs: 1\n")
    assert profile_files(["snakemake", "--workflow-profile", "slurm"], {}, REPO, tmp_path) == [
        tmp_path / "profiles" / "slurm" / "config.yaml"]


def test_a_resource_value_in_slurm_s_format_is_refused_naming_the_profile_rule_and_key(tmp_path):
    """`runtime: "2:00:00"` in an edited profile (sbatch's own format) and `mem_mb: 4GB`: Snakemake stopped when it sized
    the first job, in a traceback naming rule `all` of this workflow, not the profile. Refused at start, each with its
    file, rule and key and the value to write; written so, the jobs are planned with that walltime and memory. The
    command line's --set-resources is read the same way; the shipped profiles have no such value."""
    from helpers import run_snakemake, tiny_config
    from finetune.userconfig import resource_value_problems

    for name in ("slurm", "default"):
        assert resource_value_problems(["snakemake"], [REPO / "profiles" / name / "config.yaml"]) == [], name
    profile = tmp_path / "myslurm"
    profile.mkdir()
    shipped = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    assert "  runtime: 30          # walltime, minutes\n" in shipped and "    mem_mb: 8000 * attempt\n" in shipped
    edited = shipped.replace("  runtime: 30          # walltime, minutes\n", '  runtime: "2:00:00"\n')
    edited = edited.replace("    mem_mb: 8000 * attempt\n", "    mem_mb: 4GB\n", 1)
    (profile / "config.yaml").write_text(edited)
    config = tiny_config(tmp_path / "run")
    result = run_snakemake(tmp_path / "run", config, "-n", "--workflow-profile", str(profile), check=False, timeout=120)
    assert result.returncode != 0, result.stdout[-2000:]
    rule = next(name for name, sizes in SLURM["set-resources"].items() if sizes.get("mem_mb") == "8000 * attempt")
    said = [line for line in result.stdout.splitlines() if line.startswith(str(profile))]
    assert said == [f"{profile / 'config.yaml'}: default-resources: runtime: '2:00:00' is Slurm's time format, which "
                    "Snakemake does not take as a walltime (it reads minutes, or a duration such as 2h or 90m): write "
                    f"the minutes, {2 * 60}",
                    f"{profile / 'config.yaml'}: set-resources: {rule}: mem_mb: '4GB': mem_mb is a number of megabytes: "
                    f"write {4 * 1000}"], result.stdout[-2000:]
    assert "Traceback" not in result.stdout and not (tmp_path / "run" / "results").exists()
    # Written as said, the jobs are planned with them (a rule without its own runtime: two hours).
    (profile / "config.yaml").write_text(edited.replace('"2:00:00"', "120").replace("mem_mb: 4GB", "mem_mb: 4000"))
    planned = run_snakemake(tmp_path / "run", config, "-n", "--workflow-profile", str(profile), timeout=120).stdout
    assert "runtime=120" in planned and "mem_mb=4000" in planned, planned[-2000:]
    result = run_snakemake(tmp_path / "run", config, "-n", "--workflow-profile", str(profile), "--set-resources",
                           "train:runtime=1-12", check=False, timeout=120)
    assert result.returncode != 0 and ("--set-resources: train: runtime: '1-12' is Slurm's time format, which Snakemake "
                                       "does not take as a walltime (it reads minutes, or a duration such as 2h or 90m): "
                                       f"write the minutes, {36 * 60}") in result.stdout, result.stdout[-2000:]
    # The command line's --set-resources replaces the profile's whole: the profile's value no longer applies.
    assert shipped.count("    runtime: 480 * attempt\n") == 1  # train's
    (profile / "config.yaml").write_text(shipped.replace("    runtime: 480 * attempt\n", '    runtime: "8:00:00"\n'))
    assert run_snakemake(tmp_path / "run", config, "-n", "--workflow-profile", str(profile), check=False,
                         timeout=120).returncode != 0
    planned = run_snakemake(tmp_path / "run", config, "-n", "--workflow-profile", str(profile), "--set-resources",
                            "train:runtime=90", timeout=120).stdout
    assert "runtime=90" in planned and "Slurm's time format" not in planned, planned[-2000:]
    # Binary units as Snakemake's own size parser reads them (4 GiB: 4,295 MB), and Slurm's M:S said so.
    from finetune.userconfig import _resource_problem

    assert _resource_problem("mem_mb", "4GiB").endswith(f"write {round(4 * 1024 ** 3 / 1e6)}")
    assert "(Slurm reads two parts as minutes:seconds" in _resource_problem("runtime", "12:00")
    # A walltime of several parts (Snakemake's parser reads one number and unit), and mem_mib with a unit: refused
    # with the figure to write; one part, or a plain number, passes as Snakemake reads it.
    assert _resource_problem("runtime", "2h30m").endswith(f"write the minutes, {2 * 60 + 30}")
    assert _resource_problem("runtime", "1d 12h").endswith(f"write the minutes, {36 * 60}")
    assert _resource_problem("runtime", "1h1min1s").endswith(f"write the minutes, {62}")
    assert _resource_problem("mem_mib", "4GB").endswith(f"mem_mib is a number of mebibytes: write {round(4e9 / 2 ** 20)}")
    assert [_resource_problem(name, value) for name, value in
            [("runtime", "90m"), ("runtime", "2h"), ("runtime", "150"), ("mem_mib", "4096"), ("mem", "4GB")]] == [None] * 5
    result = run_snakemake(tmp_path / "run", config, "-n", "--set-resources", "train:runtime=2h30m",
                           "--default-resources", "mem_mib=4GiB", check=False, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stdout, result.stdout[-2000:]
    assert ("--set-resources: train: runtime: '2h30m': Snakemake reads one number and unit as a walltime (2h, 90m), not "
            "several: write the minutes, 150") in result.stdout, result.stdout[-2000:]
    assert "--default-resources: mem_mib: '4GiB': mem_mib is a number of mebibytes: write 4096" in result.stdout


def test_a_profile_entry_naming_no_rule_is_refused_and_a_resource_one_letter_off_is_said(tmp_path):
    """`trian:` under set-resources (a typo in an edited profile, or --set-resources trian:mem_mb=...): Snakemake applied
    it to nothing without a word, and the train jobs ran with their rule's own sizes, no `* attempt` on a retry.
    Refused at start, naming the entry and the rule meant; nothing is written. A resource key one letter off one that is
    read (`mem_mbb`, `slurm_partiton`: the partition check was bypassed) is said at start, naming where it is."""
    from helpers import run_snakemake, tiny_config

    profile = tmp_path / "myslurm"
    profile.mkdir()
    shipped = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    assert shipped.count("\n  train:") == 1 and "\n  runtime: 30" in shipped
    (profile / "config.yaml").write_text(shipped.replace("\n  train:", "\n  trian:", 1).replace(
        "\n  runtime: 30", "\n  slurm_partiton: debug\n  runtime: 30", 1))
    config = tiny_config(tmp_path / "run")
    result = run_snakemake(tmp_path / "run", config, "-n", "--workflow-profile", str(profile), "--set-threads",
                           "evalute=1", check=False, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stdout, result.stdout[-2000:]
    for line in ("set-resources names trian, which is no rule of this workflow (did you mean train?): its settings "
                 "would apply to nothing; the rules are all, decode, evaluate,",
                 "set-threads names evalute, which is no rule of this workflow (did you mean evaluate?): its threads "
                 "would apply to nothing", f"nothing ran, and every earlier result is kept (the profile in use: {profile}"):
        assert line in result.stdout, result.stdout[-2000:]
    assert not (tmp_path / "run" / "results").exists()
    (profile / "config.yaml").write_text(shipped.replace("\n  runtime: 30", "\n  slurm_partiton: debug\n  runtime: 30", 1))
    planned = run_snakemake(tmp_path / "run", config, "-n", "--workflow-profile", str(profile), "--set-resources",
                            "train:mem_mbb=100", timeout=120).stdout
    assert ("note: default-resources: slurm_partiton is no resource Snakemake or its Slurm plugin reads (did you mean "
            "slurm_partition?): it sizes nothing") in planned, planned[-2000:]
    assert "note: set-resources train: mem_mbb is no resource Snakemake or its Slurm plugin reads (did you mean " \
           "mem_mb?)" in planned, planned[-2000:]


def test_an_option_given_twice_on_the_command_line_is_refused_and_nothing_runs(tmp_path):
    """`--configfile a.yaml --configfile b.yaml` read b.yaml alone, and a second --set-resources replaced the first's,
    without a word (Snakemake keeps the last of an option that takes a list). Refused at start, naming the option;
    the two files after one --configfile are read both, the second over the first."""
    from helpers import run_snakemake, tiny_config

    first = tiny_config(tmp_path)
    second = tmp_path / "epochs.yaml"
    second.write_text("train:\n  epochs: 7\n")
    result = run_snakemake(tmp_path, None, "--configfile", str(first), "--configfile", str(second),
                           "--set-resources", "train:mem_mb=100", "--set-resources=evaluate:runtime=3", "-n",
                           check=False, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "an option is given twice on the command line: nothing ran" in result.stdout, result.stdout
    assert "--configfile is given 2 times (--configfile, --configfile): Snakemake reads only the last one's files" \
        in result.stdout, result.stdout
    assert "--set-resources is given 2 times (--set-resources, --set-resources)" in result.stdout, result.stdout
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()
    result = run_snakemake(tmp_path, None, "--configfile", str(first), str(second), "-n", "-p", timeout=120)
    assert '"epochs": 7' in result.stdout, result.stdout[-3000:]  # both read: the second's epochs, the first's data
    # `--configfile=a.yaml b.yaml`: one config file and a target b.yaml (Snakemake said only that no rule makes it).
    result = run_snakemake(tmp_path, None, f"--configfile={first}", str(second), "-n", check=False, timeout=120)
    assert result.returncode != 0 and "MissingRuleException" not in result.stdout, result.stdout[-3000:]
    assert (f"{second}: given as a target (a file to make), not as a config file: nothing ran. --configfile=a.yaml "
            f"takes one file; give several after one --configfile without '=': --configfile a.yaml {second}") \
        in result.stdout, result.stdout[-3000:]
    # The same with paths relative to where Snakemake is started, its --directory elsewhere (found by review: the file
    # was looked for in the working directory only, and Snakemake's MissingRuleException came back).
    (tmp_path / "work").mkdir()
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                             "work", "--cores", "1", f"--configfile={first.name}", second.name, "-n"], cwd=tmp_path,
                            env={**os.environ, "PWD": str(tmp_path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode != 0 and "MissingRuleException" not in result.stdout, result.stdout[-3000:]
    assert f"{second.name}: given as a target (a file to make), not as a config file" in result.stdout


@pytest.mark.parametrize("argv, option, dest, kept", [
    (["-nRtrain", "--forcer", "split"], "--forcerun", "forcerun", {"split"}),
    (["--configfiles", "a.yaml", "--configfile", "b.yaml"], "--configfile", "configfile", ["b.yaml"]),
    (["--res", "gpu=1", "--resources=mem_mb=9"], "--resources", "resources", ["mem_mb"]),
    (["--omit-fr", "split", "-nO", "train"], "--omit-from", "omit_from", {"train"}),
    (["--set-th", "train=1", "--set-threads", "evaluate=1"], "--set-threads", "set_threads", ["evaluate"]),
])
def test_an_option_given_twice_abbreviated_or_clustered_is_found_as_snakemake_reads_it(argv, option, dest, kept):
    """Snakemake's own parser (abbreviations, clustered short options) keeps the last of the two alone; the check at
    start names the option."""
    from snakemake.cli import get_argument_parser

    from finetune.userconfig import repeated_options

    parsed = vars(get_argument_parser().parse_known_args(argv)[0])[dest]
    assert (set(parsed) if isinstance(kept, set) else [str(each) for each in parsed]) == kept
    lines = repeated_options(["snakemake", *argv])
    assert len(lines) == 1 and lines[0].startswith(f"{option} is given 2 times"), lines


def test_a_command_line_option_that_replaces_a_profile_setting_whole_says_what_it_drops(tmp_path):
    """`--resources mem_mb=8000` replaces the workflow profile's `resources:` whole: its `gpu: 1` (one GPU job at a
    time) no longer applied, without a word; so for --set-resources and the Slurm profile's per-rule settings. A note
    names what the profile set and the command line drops; given again on the command line, nothing is said."""
    from helpers import run_snakemake, tiny_config

    config = tiny_config(tmp_path)
    result = run_snakemake(tmp_path, config, "--resources", "mem_mb=8000", "-n", timeout=120)
    profile = REPO / "profiles" / "default" / "config.yaml"
    dropped = sorted(set(DEFAULT["resources"]) - {"mem_mb"})
    assert "gpu" in dropped
    # What Snakemake itself then holds, read by a throwaway workflow given the same profile and option: no gpu.
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "Snakefile").write_text('print("RESOURCES", sorted(workflow.global_resources))\n'
                                                   'rule all:\n    shell: "true"\n')
    for given, has_gpu in (([], True), (["--resources", "mem_mb=8000"], False)):
        probe = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--workflow-profile",
                                str(REPO / "profiles" / "default"), *given], cwd=tmp_path / "probe", text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120).stdout
        assert ("'gpu'" in probe.split("RESOURCES", 1)[1].splitlines()[0]) == has_gpu, probe[-2000:]
    assert (f"note: --resources on the command line replaces the resources of the profile {profile} whole: its "
            f"{', '.join(dropped)} no longer appl") in result.stdout, result.stdout[-3000:]
    result = run_snakemake(tmp_path, config, "--resources", "mem_mb=8000", *(f"{k}=1" for k in dropped), "-n",
                           timeout=120)
    assert "replaces the resources" not in result.stdout, result.stdout[-3000:]
    # the Slurm profile (read, not submitted: -n): one rule's runtime given on the command line drops every other
    # rule's settings of the profile
    result = run_snakemake(tmp_path, config, "--profile", str(REPO / "profiles" / "slurm"), "--set-resources",
                           "train:runtime=600", "-n", cores=None, timeout=120)
    lost = [f"{rule}:{name}" for rule, names in SLURM["set-resources"].items() for name in names
            if (rule, name) != ("train", "runtime")]
    line = next((x for x in result.stdout.splitlines() if "replaces the set-resources" in x), "")
    assert line.endswith(f"whole: its {', '.join(lost)} no longer apply; give them on the command line too, where "
                         "still meant"), result.stdout[-3000:]


def test_the_slurm_size_checks_read_partitions_of_several_node_groups_as_sinfo_lists_them():
    # A one-node test cluster lists one group; a real cluster lists a line per partition and group of like nodes,
    # the default marked *, a size of mixed nodes as a lower bound ("2+"). The checks compare with a partition's
    # largest node, and leave unchecked what sinfo gives no exact size of.
    from finetune.slurmchecks import gpu_problems, job_size, node_sizes, parse_sinfo, partitions_with_gpus, size_problems

    lines = parse_sinfo("cpu*|(null)|32|128000\ncpu*|(null)|64|256000\ngpu|gpu:a100:4|48|512000\nmixed|(null)|2+|4000\n")
    assert node_sizes(lines) == {"cpu": (64, 256000), "gpu": (48, 512000), "mixed": (None, 4000)}
    assert partitions_with_gpus(lines) == ({"cpu": False, "gpu": True, "mixed": False}, "cpu")
    asking = {"train": {"cpus": 64, "mem_mb": 300000, "partitions": ()},  # the default, cpu: memory too large
              "evaluate": {"cpus": 50, "mem_mb": 1000, "partitions": ("gpu", "cpu")},  # fits cpu's largest node
              "decode": {"cpus": 99, "mem_mb": 1000, "partitions": ("mixed",)}}  # CPUs unknown there: not checked
    problems = size_problems(asking, node_sizes(lines), "cpu")
    assert len(problems) == 1 and problems[0].startswith("rule train asks Slurm for 300000 MB of memory a job") \
        and "(mem_mb: the profile's set-resources or default-resources, or --set-resources), and the largest node of " \
        "partition cpu has 256000" in problems[0], problems
    assert [p.split(":")[0] for p in gpu_problems({None: {"train.device"}, "gpu": {"evaluate.device"}},
                                                  *partitions_with_gpus(lines))] == ["train.device cuda"]
    # partitions' time limits as sinfo's %l prints them; a rule asking past every partition it may go to is named
    from finetune.slurmchecks import slurm_minutes, time_limits, time_problems

    assert [slurm_minutes(t) for t in ("infinite", "UNLIMITED", "n/a", "30", "30:00", "30:01", "8:00:00", "1-12",
                                       "2-00:00:00", "1-2:03")] == [None, None, None, 30, 30, 31, 480, 2160, 2880, 1563]
    limits = time_limits(parse_sinfo("short*|(null)|32|1000|4:00:00\nlong|(null)|8|1000|7-00:00:00\n"
                                     "open|(null)|8|1000|infinite\nold|(null)|8|1000\n"))
    assert limits == {"short": 240, "long": 10080, "open": None, "old": None}
    asking = {"train": {"runtime": 480, "partitions": ()},  # the default, short: past its 4 h
              "evaluate": {"runtime": 480, "partitions": ("short", "long")},  # fits long's
              "decode": {"runtime": 99999, "partitions": ("open",)},  # no limit
              "export_onnx": {"runtime": 99999, "partitions": ("old",)}}  # none known: not checked
    problems = time_problems(asking, limits, "short")
    assert len(problems) == 1 and problems[0].startswith("rule train asks Slurm for a walltime of 480 minutes") \
        and "the time limit of partition short is 240 minutes (`sinfo -o %P,%l`)" in problems[0], problems
    # what to raise where Slurm ended a job: its memory (polled: the bytes; cgroups: an oom_kill event), its walltime
    from finetune.slurmchecks import limit_hint

    assert limit_hint("train", ["slurmstepd: error: StepId=21.0 exceeded memory limit (686055424 > 524288000), being "
                                "killed"]) == (" (it went past its memory, 655 MiB used of the 500 allowed: raise rule "
                                               "train's mem_mb in the profile's set-resources)")
    assert limit_hint("fa_train", ["slurmstepd: error: Detected 1 oom_kill event in StepId=41.batch. Some of the step "
                                   "tasks have been OOM Killed."], each_time=True) == (
        " (where it is ended each time, it went past its memory: raise rule fa_train's mem_mb in the profile's "
        "set-resources)")
    assert limit_hint("train", ["slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-12-07T12:00:00 DUE TO NODE "
                                "FAILURE ***"]) == ""
    # as the Slurm plugin asks: cpus_per_task over threads (none where negative), mem_mb_per_cpu x CPUs over mem_mb
    assert job_size({"cpus_per_task": 4, "mem_mb": 1000}, 8) == (4, 1000)
    assert job_size({"cpus_per_task": -1, "mem_mb_per_cpu": 500, "mem_mb": 1000}, 8) == (0, 500)
    assert job_size({"mem_mb_per_cpu": 500}, 8) == (8, 4000)
