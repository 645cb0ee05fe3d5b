"""finetune.cli: torch-free entry points stay torch-free; a stopped job exits 143, also where a library turned the
stop into its own error; a known failure is one line and exit 1, a bug a traceback and exit 2, a lost peer's error one
line; a job sets no more torch threads than the CPUs it may run on; a JSON argument that is not JSON is a usage error
saying where; an output given the path of an input, or of another output, is a usage error before anything is
written."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from faults import make_images, split_and_weights, start_script, train_args
from helpers import REPO, run_script


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})})


def test_run_reports_an_error_without_importing_torch():
    result = run_python("""
        import sys, atexit
        from finetune.cli import run
        from finetune.errors import DataError
        atexit.register(lambda: print("torch loaded:", "torch" in sys.modules))
        def main():
            raise DataError("bad.png is not an image")
        run(main)
    """)
    assert result.returncode == 1
    assert "error: bad.png is not an image" in result.stderr
    assert "torch loaded: False" in result.stdout


def test_a_stopped_training_job_exits_143():
    result = run_python("""
        from finetune.cli import run
        from finetune.errors import StopRequested
        def main():
            raise StopRequested("SIGTERM")
        run(main)
    """)
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM" in result.stderr


def test_a_stop_that_a_library_wrapped_in_its_own_error_still_exits_143(tmp_path):
    """Ctrl-C or a walltime's SIGTERM while torch's dynamo exporter runs: the exporter catches the stop and raises its own
    error from it (a ConversionError and a page of traceback); the job still ends as stopped, 143, in one line."""
    result = run_python(f"""
        import os, signal
        import torch
        from finetune.cli import run

        class Stops(torch.nn.Module):
            def forward(self, x):
                os.kill(os.getpid(), signal.SIGINT)  # while the exporter traces the model
                return x * 2

        def main():
            torch.onnx.export(Stops(), (torch.zeros(2, 3),), {str(tmp_path / "m.onnx")!r}, dynamo=True)
        run(main)
    """)
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("stopped by SIGINT: stopped at once"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["raised_from_it", "raised_while_handling_it"])
def test_a_stop_turned_into_another_error_by_the_code_it_interrupted_still_exits_143(how):
    """A library that catches everything (an exporter, a data loader's worker) turns a stop into an error of its own,
    naming the stop as its cause (`raise ... from`) or only as what it was handling: the job ends as stopped, 143, in
    one line, either way, and also where the code around the library turned that error into another."""
    result = run_python(f"""
        import os, signal, time
        from finetune.cli import run

        def interrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

        def library():
            try:
                interrupted()
            except BaseException as exc:
                if {how!r} == "raised_from_it":
                    raise RuntimeError("the exporter failed") from exc
                raise RuntimeError("the exporter failed")

        def main():
            try:
                library()
            except RuntimeError:
                raise ValueError("the model cannot be exported")
        run(main)
    """)
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.startswith("stopped by SIGTERM: stopped at once") and result.stderr.count("\n") == 1, \
        result.stderr[-3000:]


@pytest.mark.parametrize("error", ["KeyError('label')", "RuntimeError('write to the log: Broken pipe')"])
def test_an_unexpected_error_is_a_traceback_and_exit_status_2(error):
    """A bug is not a one-line message: its traceback, exit status 2 (1 is a known failure with its one line). In one
    process no other training process can be gone, so an error that names a broken pipe is a bug too."""
    result = run_python(f"""
        from finetune.cli import run
        def main():
            raise {error}
        run(main)
    """, env={"WORLD_SIZE": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "KeyError: 'label'" if error.startswith("KeyError") else "RuntimeError: write to the log: Broken pipe")


PEER_GONE = "[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:8094: Connection reset by peer"


def test_a_lost_peer_s_error_of_many_lines_is_said_in_one():
    """NCCL's errors run over many lines (the communicator, the last error, a hint): the job's error line keeps their
    words on one line, cut at 300 characters, so that several processes' lines in one log stay whole."""
    words = ["NCCL communicator was aborted on rank 1.", "Last error:", *(f"detail {i:02d}" for i in range(60))]
    message = "\n  ".join(words)
    result = run_python(f"""
        from finetune.cli import run
        def main():
            raise RuntimeError({message!r})
        run(main)
    """, env={"WORLD_SIZE": "2", "RANK": "1"})
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1, result.stderr
    said = result.stderr.removeprefix("rank 1: error: another training process of this job ended, and this one cannot "
                                      "go on without it (torchrun's summary names it and why): RuntimeError: ").rstrip("\n")
    assert said == " ".join(words)[:300], result.stderr


@pytest.mark.parametrize("when", ["as_the_error_leaves_main", "as_the_job_writes_its_error_line"])
def test_torchruns_sigterm_after_a_lost_peer_leaves_the_one_line_failure(when):
    """One of several training processes is killed: the one left fails in its collective, and torchrun's SIGTERM to it
    comes a moment later, while the error is on its way out. It still ends with the one line saying another process
    ended, exit 1; not a traceback (CI saw one, the SIGTERM arriving while the error was read), nor a stop (143) that
    hides why the job failed. The SIGTERM is sent at each of those two moments: in a `finally` the error passes
    through, and when the job reads the error's message."""
    result = run_python(f"""
        import os, signal
        from finetune.cli import run

        class PeerGone(RuntimeError):
            def __str__(self):
                if {when!r} == "as_the_job_writes_its_error_line":
                    os.kill(os.getpid(), signal.SIGTERM)
                return {PEER_GONE!r}

        def main():
            try:
                raise PeerGone()
            finally:
                if {when!r} == "as_the_error_leaves_main":
                    os.kill(os.getpid(), signal.SIGTERM)
        run(main)
    """, env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "stopped by" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith("error: another training process of this job ended"), result.stderr[-3000:]
    assert "Connection reset by peer" in result.stderr


def test_a_sigterm_while_the_error_line_is_written_leaves_the_line():
    """A job failing with its one-line error as a SIGTERM comes (Snakemake stopping the other jobs once one failed):
    the line, exit 1, not a traceback of the stop raised inside the error's handling."""
    result = run_python("""
        import os, signal
        from finetune.cli import run
        from finetune.errors import DataError

        class Failing(DataError):
            def __str__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                return "bad.png is not an image"

        def main():
            raise Failing()
        run(main)
    """)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr == "error: bad.png is not an image\n", result.stderr[-3000:]


@pytest.mark.parametrize("call", ["load_resume(Path(STATE), print)", "load_state_dict(STATE)"])
def test_a_stop_while_a_file_is_read_is_a_stop_not_a_damaged_file(tmp_path, call):
    """SIGTERM (a walltime) while the resume state or the weights are read: the job stops, 143, rather than take the
    interrupted read for a damaged file (starting again from epoch 1 and overwriting the resume state; or failing as
    an unreadable checkpoint)."""
    state = tmp_path / "state.pt"
    result = run_python(f"""
        import os, signal
        from pathlib import Path
        import torch
        from finetune.cli import run
        from finetune.progress import load_resume
        from finetune.weights import load_state_dict

        STATE = {str(state)!r}
        torch.save({{"epoch": 1, "state_dict": {{"w": torch.zeros(2)}}}}, STATE)
        real_load = torch.load

        def load(*args, **kwargs):  # the signal arrives while the file is read
            os.kill(os.getpid(), signal.SIGTERM)
            return real_load(*args, **kwargs)

        torch.load = load

        def main():
            {call}
            print("went on")
        run(main)
    """)
    assert result.returncode == 143, result.stdout + result.stderr
    assert "went on" not in result.stdout and "unreadable" not in result.stdout + result.stderr
    assert "stopped by SIGTERM: stopped at once" in result.stderr


def test_sighup_stops_a_job_unless_it_is_ignored_as_under_nohup():
    """A closed terminal (SIGHUP) stops a job cleanly, exit 143, as SIGTERM does; a job started under nohup (SIGHUP
    ignored, inherited) goes on to its end: the stop handler must not replace the ignore. The same for a
    training loop's SignalGuard."""
    import signal

    code = """
        import os, signal, time
        from finetune.cli import run
        from finetune.stopping import SignalGuard
        def main():
            with SignalGuard() as guard:
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.2)
                print("guard saw:", guard.signum)
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
            print("went on")
        run(main)
    """
    for ignored in (False, True):
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                                preexec_fn=lambda ignored=ignored: signal.signal(
                                    signal.SIGHUP, signal.SIG_IGN if ignored else signal.SIG_DFL))
        if ignored:
            assert result.returncode == 0 and "guard saw: None" in result.stdout and "went on" in result.stdout, result
        else:
            assert "guard saw: 1" in result.stdout, result  # the loop's guard: a stop at the next batch boundary
            assert result.returncode == 143 and "stopped by SIGHUP" in result.stderr, result


def test_fast_exit_runs_atexit_and_flushes_what_was_printed():
    """run(main, fast_exit=True) skips the interpreter's teardown, not the atexit handlers nor buffered output."""
    result = run_python("""
        import atexit, sys
        from finetune.cli import run
        atexit.register(lambda: print("atexit ran"))
        def main():
            sys.stdout.write("written, not flushed")
        run(main, fast_exit=True)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "written, not flushedatexit ran\n"
    # Nothing printed after it: the partial line is flushed by run itself, and a handler's error output too.
    result = run_python("""
        import atexit, sys
        from finetune.cli import run
        atexit.register(lambda: sys.stderr.write("atexit ran, no new line"))
        def main():
            sys.stdout.write("written, not flushed")
        run(main, fast_exit=True)
    """, env={"PYTHONUNBUFFERED": ""})  # buffered, as where PYTHONUNBUFFERED is not set
    assert (result.returncode, result.stdout, result.stderr) == (0, "written, not flushed", "atexit ran, no new line")


def test_the_time_line_adds_up_to_the_wall_time_the_parent_measures():
    # A job that spends 0.6 s before run() (as imports do) and 0.3 s in its one part: the line at the end of its
    # output names each part with its seconds, and their sum is the process's life as the parent clocks it.
    import re
    import time

    started = time.monotonic()
    result = run_python("""
        import time
        time.sleep(0.6)
        from finetune.cli import run
        from finetune.jobclock import lap
        def main():
            time.sleep(0.3)
            lap("work")
            time.sleep(0.2)
        run(main)
    """)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    parts = re.fullmatch(r"time: start-up ([\d.]+) s, work ([\d.]+) s, other ([\d.]+) s; ([\d.]+) s in all", line)
    assert parts, line
    startup, work, other, total = map(float, parts.groups())
    assert 0.6 <= startup + 0.05 and startup <= wall - 0.45
    assert abs(work - 0.3) <= 0.1 and abs(other - 0.2) <= 0.1
    assert abs(total - (startup + work + other)) <= 0.15
    assert wall - 1.0 <= total <= wall + 0.05  # the parent's clock also counts starting and reaping the process


def test_a_job_says_its_peak_memory_before_its_time_line():
    # A job that held 400 MB at once (written to, so resident), then let it go: its peak, not its memory at the end.
    import re

    result = run_python("""
        import numpy as np
        from finetune.cli import run
        from finetune.jobclock import lap
        def main():
            held = np.ones(400 * 2**20, dtype=np.uint8)
            del held
            lap("work")
        run(main)
    """)
    assert result.returncode == 0, result.stderr
    memory, time_line = result.stdout.strip().splitlines()[-2:]
    assert time_line.startswith("time: start-up "), result.stdout
    peak = re.fullmatch(r"peak memory: ([\d,]+) MB \(resident, this script; a cluster job also holds the Snakemake process that "
                         r"runs it: give mem_mb about 200 MB more\)", memory)
    assert peak, memory
    assert 400 * 2**20 / 1e6 <= float(peak.group(1).replace(",", "")) <= 400 * 2**20 / 1e6 + 300
    # One of several training processes (torchrun's LOCAL_WORLD_SIZE): its own peak, and what the job needs.
    result = run_python("""
        from finetune.cli import run
        from finetune.jobclock import lap
        run(lambda: lap("work"))
    """, env={"LOCAL_WORLD_SIZE": "4"})
    memory = result.stdout.strip().splitlines()[-2]
    peak = re.fullmatch(r"peak memory: ([\d,]+) MB \(resident\) in this one of the job's 4 training processes on this "
                        r"machine, each holding about as much: the job needs about ([\d,]+) MB; a cluster job also holds "
                        r"the Snakemake process that runs it: give mem_mb about 200 MB more", memory)
    assert peak and abs(4 * int(peak.group(1).replace(",", "")) - int(peak.group(2).replace(",", ""))) <= 2, memory


def test_a_job_without_parts_prints_no_time_line():
    result = run_python("""
        from finetune.cli import run
        def main():
            print("done")
        run(main)
    """)
    assert result.returncode == 0 and result.stdout == "done\n", result.stdout


@pytest.mark.slow
def test_a_job_takes_no_more_torch_threads_than_the_cpus_it_may_run_on(tmp_path):
    """A Slurm allocation or taskset may give a job fewer CPUs than the node has: the rule's threads: 2 on one CPU
    ran two torch threads on it (oversubscribed). The train job records the threads it set (train_info.json)."""
    inputs = split_and_weights(tmp_path / "inputs", 3)
    options = {"epochs": 1, "batch_size": 4, "device": "cpu", "schedule": "constant"}
    allowed = sorted(os.sched_getaffinity(0))

    def threads_taken(out, cpus):
        args = train_args(inputs.split, inputs.manifest, out, options)
        args[args.index("--threads") + 1] = "2"
        job = start_script("train", *args, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output
        return json.loads((out / "train_info.json").read_text())["threads"]

    assert threads_taken(tmp_path / "one_cpu", allowed[:1]) == 1
    assert threads_taken(tmp_path / "all", allowed) == min(2, len(allowed))


def test_a_json_argument_that_is_not_json_is_refused_saying_where_it_breaks(tmp_path):
    """The scripts also run alone (`python workflow/scripts/split.py --dataset '...'`): JSON written by hand with a
    key unquoted is refused by the argument's name with json's own account of where it breaks, exit status 2 (a
    usage error), no traceback and nothing written."""
    text = '{"format": "imagefolder", path: "data"}'
    with pytest.raises(json.JSONDecodeError) as broken:
        json.loads(text)
    result = run_script("split", "--dataset", text, "--out", str(tmp_path / "split.csv"),
                        "--report", str(tmp_path / "split.report.json"))
    assert result.returncode == 2, result.stdout
    assert result.stdout.splitlines()[-1] == f"split.py: error: argument --dataset: not valid JSON: {broken.value}"
    assert "Traceback" not in result.stdout and not list(tmp_path.iterdir())


@pytest.mark.parametrize("option, value, said", [
    ("--image-size", "-5", "argument --image-size: -5: must be 1 or more"),
    ("--image-size", "0", "argument --image-size: 0: must be 1 or more"),
    ("--threads", "0", "argument --threads: 0: must be 1 or more"),
    ("--threads", "two", "argument --threads: 'two' is not a whole number"),
])
def test_a_size_or_thread_count_below_one_is_a_usage_error_not_a_traceback(tmp_path, option, value, said):
    """A script run alone with `--image-size -5` stopped in PIL (`height and width must be > 0`) with a traceback,
    the exit status the docs call a bug; `--threads 0` ran on. Refused as the other arguments are, nothing written."""
    result = run_script("decode", "--split", str(tmp_path / "split.csv"), option, value,
                        "--out-images", str(tmp_path / "images.npy"), "--out-info", str(tmp_path / "info.json"))
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout
    assert result.stdout.splitlines()[-1] == f"decode.py: error: {said}", result.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options, said", [
    ({"epochs": "2"}, "train: epochs must be a whole number, not '2'"),
    ({"batch_size": 8.5}, "train: batch_size must be a whole number, not 8.5"),
    ({"augment": "yes"}, "train: augment must be true or false, not 'yes'"),
    ({"epochs": True}, "train: epochs must be a whole number, not True"),
    ({"ema_decay": "0.9"}, "train: ema_decay must be a number or null, not '0.9'"),
])
def test_training_options_of_the_wrong_type_given_to_a_script_alone_are_refused_naming_them(tmp_path, options, said):
    """`--options` written by hand (the workflow's schema refuses these before any job): `"epochs": "2"` stopped deep in
    training with a TypeError's traceback, and `"augment": "yes"` trained as if true. Refused on one line, nothing
    written."""
    inputs = split_and_weights(tmp_path, 4)
    out = tmp_path / "run"
    result = run_script("train", *train_args(inputs.split, inputs.manifest, out, {"device": "cpu", **options}))
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"error: {said}" in result.stdout, result.stdout
    assert not out.exists() or not any(out.iterdir())


def _manifest_and_split_args(tmp_path):
    """A CSV manifest of 8 real images, and the split script's arguments for it (the dataset's path as written)."""
    make_images(tmp_path / "images", {"cat": 4, "dog": 4})
    manifest = tmp_path / "images" / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{name}/{i:03d}.png,{name}\n" for name in ("cat", "dog")
                                                 for i in range(4)))
    dataset = {"format": "csv", "path": str(manifest), "val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}
    return manifest, ["--dataset", json.dumps(dataset)]


@pytest.mark.parametrize("out", ["manifest", "manifest by another path", "the other output"])
def test_a_script_refuses_an_output_that_would_replace_its_input_or_another_output(tmp_path, out):
    """A script run by hand with an output path that is one of its inputs (the dataset's CSV manifest, written the
    same or as `images/../images/manifest.csv`), or that another output writes: a usage error naming both options,
    exit status 2, and the input byte for byte as it was, nothing else written. With its own paths, the same command
    writes the split: the refusal is what kept the manifest."""
    manifest, dataset = _manifest_and_split_args(tmp_path)
    before = manifest.read_bytes()
    report = tmp_path / "split.report.json"
    target = {"manifest": str(manifest), "manifest by another path": str(tmp_path / "images" / ".." / "images" /
                                                                            "manifest.csv"),
              "the other output": str(report)}[out]
    result = run_script("split", *dataset, "--out", target, "--report", str(report))
    assert result.returncode == 2, result.stdout
    said = result.stdout.splitlines()[-1]
    if out == "the other output":
        assert said == (f"split.py: error: --report {report}: the same file as --out (an output): give each output "
                        "its own path")
    else:
        assert said == (f"split.py: error: --out {target}: the same file as the \"path\" of --dataset (an input): "
                        "writing the output would replace it; give the output another path")
    assert manifest.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    written = run_script("split", *dataset, "--out", str(tmp_path / "split.csv"), "--report", str(report))
    assert written.returncode == 0, written.stdout
    rows = (tmp_path / "split.csv").read_text().splitlines()
    assert len(rows) == 9 and manifest.read_bytes() == before


@pytest.mark.parametrize("script, args, output, input_option", [
    ("evaluate", ["--checkpoint", "model.pt", "--split", "split.csv", "--out-metrics", "split.csv",
                  "--out-confusion", "c.csv", "--out-predictions", "p.csv"], "--out-metrics", "--split"),
    ("export_onnx", ["--checkpoint", "model.pt", "--split", "split.csv", "--out-onnx", "model.pt",
                     "--out-parity", "parity.json"], "--out-onnx", "--checkpoint"),
    ("train", ["--split", "split.csv", "--options", "{}", "--decoded", "images.npy", "images.json",
               "--out-checkpoint", "m.pt", "--out-history", "images.json", "--out-info", "i.json"], "--out-history",
     "--decoded"),
    ("predict", ["--model", "model.onnx", "--images", "list.csv", "--out", "list.csv"], "--out", "--images"),
])
def test_each_script_refuses_an_output_over_one_of_its_inputs(tmp_path, script, args, output, input_option):
    """The same check in the other scripts (each one's path options, `--decoded`'s two paths among them): the input
    given as an output is named, and its bytes are kept."""
    inputs = ("model.pt", "split.csv", "images.npy", "images.json", "model.onnx", "list.csv")
    for name in inputs:
        (tmp_path / name).write_bytes(f"{name} as it was".encode())
    result = subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / f"{script}.py"), *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 2, result.stdout + result.stderr
    value = args[args.index(output) + 1]
    assert result.stderr.splitlines()[-1] == (f"{script}.py: error: {output} {value}: the same file as {input_option} "
                                              "(an input): writing the output would replace it; give the output "
                                              "another path")
    assert all((tmp_path / name).read_bytes() == f"{name} as it was".encode() for name in inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs)


@pytest.mark.parametrize("case", ["missing input", "input a folder", "link to nothing", "output a folder"])
def test_a_script_refuses_a_path_that_names_nothing_or_a_folder_before_reading_anything(tmp_path, case):
    """evaluate.py run by hand with a --split that is not there, a folder, or a link whose target went, or an
    --out-metrics that is a folder: a traceback of the first read (or of the last write, after the whole test set was
    scored) before; a usage error naming the option now, nothing written."""
    (tmp_path / "model.pt").write_bytes(b"a checkpoint")
    (tmp_path / "split.csv").write_bytes(b"path,label\n")
    (tmp_path / "folder").mkdir()
    split, metrics = "split.csv", "metrics.json"
    if case == "missing input":
        split = "splt.csv"
    elif case == "input a folder":
        split = "folder"
    elif case == "link to nothing":
        os.symlink(tmp_path / "gone.csv", tmp_path / "link.csv")
        split = "link.csv"
    else:
        metrics = "folder"
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / "evaluate.py"), "--checkpoint",
                             "model.pt", "--split", split, "--out-metrics", metrics, "--out-confusion", "c.csv",
                             "--out-predictions", "p.csv"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 2, result.stdout + result.stderr
    said = {"missing input": "--split splt.csv: no such file",
            "input a folder": "--split folder is a folder: name the file to read",
            "link to nothing": "--split link.csv: no such file (a link to a path that is gone)",
            "output a folder": "--out-metrics folder is a folder: name the file to write in it"}[case]
    assert result.stderr.splitlines()[-1] == f"evaluate.py: error: {said}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not list((tmp_path / "folder").iterdir())


def _write_inputs(folder):
    """Files a script run by hand reads (their contents are never read: each case is refused before)."""
    (folder / "weights").mkdir()
    (folder / "weights" / "weights.pth").write_bytes(b"the pretrained weights")
    (folder / "weights" / "manifest.json").write_text(json.dumps({"file": "weights.pth", "sha256": "0" * 64}))
    (folder / "split.csv").write_bytes(b"path,label,class_name,split\n")
    for run in ("a/seed0", "b/seed0"):
        (folder / run).mkdir(parents=True)
        for name in ("metrics.json", "train_info.json", "history.csv", "model.onnx"):
            (folder / run / name).write_bytes(f"{run}/{name}".encode())
    (folder / "fmnist").mkdir()
    (folder / "fmnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"labels")
    (folder / "images").mkdir()
    (folder / "images" / "a.png").write_bytes(b"an image")


FILES_READ_CASES = {
    "train over the weights its manifest names": (
        "train", ["--split", "split.csv", "--manifest", "weights/manifest.json", "--options", "{}", "--out-checkpoint",
                  "weights/weights.pth", "--out-history", "h.csv", "--out-info", "i.json"],
        "--out-checkpoint weights/weights.pth: the same file as the weights file --manifest names (weights.pth) (an "
        "input): writing the output would replace it; give the output another path"),
    "lr_find over the weights its manifest names": (
        "lr_find", ["--split", "split.csv", "--manifest", "weights/manifest.json", "--options", "{}", "--out-csv",
                    "l.csv", "--out-png", "l.png", "--out-suggestion", "weights/weights.pth"],
        "--out-suggestion weights/weights.pth: the same file as the weights file --manifest names (weights.pth) (an "
        "input): writing the output would replace it; give the output another path"),
    "summary over a run's metrics": (
        "summary", ["--runs", "a/seed0", "b/seed0", "--weights-source", "pretrain", "--out-csv", "b/seed0/metrics.json",
                    "--out-md", "s.md"],
        "--out-csv b/seed0/metrics.json would replace a file inside --runs's folder b/seed0, whose files are read: "
        "write the output outside it"),
    "predict's selection over a run's train_info": (
        "predict", ["--choose-from", "a/seed0", "b/seed0", "--images", "images", "--out", "p.csv", "--out-selection",
                    "a/seed0/train_info.json"],
        "--out-selection a/seed0/train_info.json would replace a file inside --choose-from's folder a/seed0, whose "
        "files are read: write the output outside it"),
    "split over a file of the dataset's folder": (
        "split", ["--dataset", '{"format": "fashion-mnist", "path": "fmnist"}', "--out",
                  "fmnist/train-labels-idx1-ubyte.gz", "--report", "r.json"],
        '--out fmnist/train-labels-idx1-ubyte.gz would replace a file inside the "path" of --dataset, fmnist, whose '
        "files are read: write the output outside it"),
    "options a list": (
        "train", ["--split", "split.csv", "--manifest", "weights/manifest.json", "--options", "[1]",
                  "--out-checkpoint", "m.pt", "--out-history", "h.csv", "--out-info", "i.json"],
        'argument --options: a list, where a JSON object is read ({"key": value, ...})'),
    "weights from pretrain without pretrain's outputs": (
        "weights", ["--weights", '{"source": "pretrain", "arch": "resnet18"}', "--pretrained-info", "split.csv",
                    "--out-weights", "w.pth", "--out-manifest", "m.json"],
        "--weights' source is pretrain: give --pretrained-weights (the pretrain rule's outputs)"),
    "learning curves without the history": (
        "evaluate", ["--checkpoint", "weights/weights.pth", "--split", "split.csv", "--out-metrics", "m.json",
                     "--out-confusion", "c.csv", "--out-predictions", "p.csv", "--out-learning-curves-png", "l.png"],
        "--out-learning-curves-png: the learning curves are drawn from the run's history.csv: give --history"),
    "a scratch manifest without preprocessing": (
        "scratch_manifest", ["--weights", '{"arch": "resnet18"}', "--out-manifest", "m.json"],
        "--weights: no preprocessing (the weights config's, as the workflow gives them)"),
    "a scratch manifest of preprocessing without its sizes": (
        "scratch_manifest", ["--weights", '{"arch": "resnet18", "preprocessing": {"crop_size": 32}}', "--out-manifest",
                             "m.json"],
        "--weights' preprocessing {'crop_size': 32}: KeyError: 'resize_size' (the weights.preprocessing of the config, "
        "with its defaults, as the workflow gives it)"),
    "quantize timing a batch of 0": (
        "quantize_onnx", ["--onnx", "a/seed0/model.onnx", "--split", "split.csv", "--out-onnx", "q.onnx",
                          "--out-report", "q.json", "--batches", "1", "0"],
        "--batches 0: each batch size must be at least 1"),
}


@pytest.mark.parametrize("case", list(FILES_READ_CASES))
def test_a_script_run_by_hand_refuses_writing_over_what_it_reads_through_its_inputs(tmp_path, case):
    """Outputs over files a script reads through an input (the weights file a manifest names, a run folder's files,
    a dataset folder's files), and arguments a script cannot use (a JSON list for an object, a source without its
    files, a plot without its data, a batch of 0): each was written over, or a traceback, or a half-written set of
    outputs. Each is a usage error now, and every file is byte for byte as it was, none added."""
    _write_inputs(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    script, args, said = FILES_READ_CASES[case]
    result = subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / f"{script}.py"), *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == f"{script}.py: error: {said}"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_dataset_key_the_split_does_not_know_is_refused_naming_it_not_dropped(tmp_path):
    """split.py run by hand with `max_train_per_clas` (the workflow's schema refuses it at start): the key was dropped
    unsaid and the split drew every image. Refused now, with the key it was likely meant as, under the config key
    --key names."""
    dataset = json.dumps({"format": "fashion-mnist", "path": str(tmp_path), "max_train_per_clas": 2})
    for key in ("dataset", "pretrain.dataset"):
        result = run_script("split", "--dataset", dataset, "--key", key, "--out", str(tmp_path / "s.csv"),
                            "--report", str(tmp_path / "r.json"))
        assert result.returncode == 1, result.stdout
        assert result.stdout.splitlines()[-1].startswith(
            f"error: {key}.max_train_per_clas: unknown key (did you mean {key}.max_train_per_class?); allowed keys: "
            "format, path, classes, "), result.stdout
        assert not (tmp_path / "s.csv").exists()
