"""torchvision imported without torch._dynamo (finetune.importing): the same models, dynamo there when used."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from helpers import REPO, run_snakemake

# One process builds a seeded resnet18 and runs it; {build} is how it imports torchvision and builds the model.
PROBE = """
import json, sys, torch
{build}
torch.manual_seed(0)
model = build("resnet18", 4).eval()
x = torch.linspace(-2, 2, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
with torch.inference_mode():
    outputs = model(x)
state = {{"dynamo_after_model": "torch._dynamo" in sys.modules, "outputs": outputs.tolist()}}
roi_align = sys.modules["torchvision.ops.roi_align"]  # (torchvision.ops.roi_align is the function)
state["compile_supported_cpu"] = roi_align.is_compile_supported("cpu")  # torchvision's own use of dynamo
real = sys.modules["torch._dynamo.utils"]
state["dynamo_utils_is_real"] = getattr(real, "__file__", "").endswith("utils.py") and hasattr(real, "counters")
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # torch loads dynamo here (add_param_group)
model(x).logsumexp(1).mean().backward()
optimizer.step()
state["params_after_step"] = sum(p.double().sum().item() for p in model.parameters())
print(json.dumps(state))
"""
PLAIN = """
import torchvision
def build(arch, n):
    return torchvision.models.get_model(arch, weights=None, num_classes=n)
"""
OURS = "from finetune.models import build_architecture as build"


def probe(build: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE.format(build=build)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_models_built_without_dynamo_match_a_plain_torchvision_import():
    ours, plain = probe(OURS), probe(PLAIN)
    assert ours["dynamo_after_model"] is False  # what the stand-in is for
    assert plain["dynamo_after_model"] is True  # torchvision alone loads it: the check can see it
    assert ours["outputs"] == plain["outputs"]  # the same model, initialised alike
    assert ours["compile_supported_cpu"] == plain["compile_supported_cpu"]
    assert ours["dynamo_utils_is_real"] and plain["dynamo_utils_is_real"]
    assert ours["params_after_step"] == plain["params_after_step"]


@pytest.mark.fashion_mnist
def test_an_evaluate_job_does_not_load_dynamo(tiny_run_copy):
    # The tiny run's own evaluate command, run again with a hook that says at exit whether dynamo was loaded.
    dry = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml", "--forcerun", "evaluate", "-n",
                        "--printshellcmds").stdout
    lines = [line for line in dry.splitlines() if line.startswith("Shell command: ") and "evaluate.py" in line]
    assert lines, dry[-3000:]
    words = shlex.split(lines[0][len("Shell command: "):].split(" > ")[0])
    python, script, *args = words[1:] if words[0] == "exec" else words
    hook = ("import atexit, runpy, sys; atexit.register(lambda: print('dynamo loaded:', 'torch._dynamo' in sys.modules));"
            " sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([python, "-c", hook, script, *args], cwd=tiny_run_copy, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "dynamo loaded: False" in done.stdout, done.stdout[-2000:]



def test_a_dynamo_loaded_during_the_import_is_the_real_one_throughout():
    """Another torchvision might load dynamo while the stand-in is in place: its first look-up on the stand-in
    imports the real module, which every dynamo module then holds (none keeps the stand-in)."""
    code = """
import importlib.abc, sys, json
class LoadsDynamoFirst(importlib.abc.MetaPathFinder):  # as if torchvision imported dynamo at its top
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch._dynamo  # noqa: F401
        return None
import torch
sys.meta_path.insert(0, LoadsDynamoFirst())
from finetune.importing import import_torchvision
import_torchvision()
real = sys.modules["torch._dynamo.utils"]
held = [module.__dict__["utils"] for name, module in list(sys.modules.items()) if name.startswith("torch._dynamo")
        and getattr(module.__dict__.get("utils"), "__name__", None) == "torch._dynamo.utils"]
print(json.dumps({"real": hasattr(real, "__file__"), "held": len(held), "all_real": all(m is real for m in held)}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.splitlines()[-1])
    assert state["real"] and state["held"] > 0 and state["all_real"], state
