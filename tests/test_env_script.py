"""scripts/env.sh: another `python3` on PATH reuses the environment of the same requirements instead of
building a second one; a build says what it costs before it starts. Fake interpreters, no real build."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import REPO

# A stand-in for an interpreter: `-c CODE` prints a version line (what env.sh hashes and shows), `-m venv DIR`
# makes a venv-shaped folder whose bin/python is a copy of this script and whose pip only logs its calls.
FAKE_PYTHON = r"""#!/usr/bin/env bash
VERSION="@VERSION@"
if [ "$1" = "-c" ]; then
  case "$2" in
    *platform*) echo "$VERSION (fake build) x86_64" ;;
    *split*) echo "$VERSION" ;;
    *) exit 3 ;;
  esac
elif [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
  printf '#!/usr/bin/env bash\necho "$0 $*" >> "$PIP_LOG"\n[ -z "$PIP_FAIL" ]\n' > "$3/bin/pip"
  chmod +x "$3/bin/pip"
  echo "export FAKE_VENV=$3" > "$3/bin/activate"
else
  exit 3
fi
"""

pytestmark = pytest.mark.skipif(shutil.which("flock") is None or shutil.which("sha256sum") is None,
                                reason="env.sh needs flock and sha256sum")


@pytest.fixture
def checkout(tmp_path):
    """A copy of scripts/env.sh and requirements.txt, two fake Pythons (3.11.2 and 3.11.9) and an empty cache."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "env.sh", repo / "scripts" / "env.sh")
    shutil.copy(REPO / "requirements.txt", repo / "requirements.txt")
    for name, version in (("system", "3.11.2"), ("pyenv", "3.11.9")):
        bin_dir = tmp_path / name
        bin_dir.mkdir()
        (bin_dir / "python3").write_text(FAKE_PYTHON.replace("@VERSION@", version))
        (bin_dir / "python3").chmod(0o755)
    return repo


def run_env(repo: Path, python: str, **extra: str) -> subprocess.CompletedProcess:
    """`source scripts/env.sh` in bash with the fake ``python`` first on PATH (``extra``: more variables)."""
    tmp = repo.parent
    env = {"PATH": f"{tmp / python}:/usr/bin:/bin", "HOME": str(tmp), "QAREP_CACHE": str(tmp / "cache"),
           "PIP_LOG": str(tmp / "pip.log"), **extra}
    return subprocess.run(["bash", "-c", 'source scripts/env.sh && echo "activated=$FAKE_VENV"'], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)


def source_env(repo: Path, python: str, qarep_python: str | None = None) -> tuple[str, str]:
    """(what .venv points to, stderr) after a successful `source scripts/env.sh`."""
    proc = run_env(repo, python, **({"QAREP_PYTHON": qarep_python} if qarep_python else {}))
    assert proc.returncode == 0, proc.stderr
    target = os.readlink(repo / ".venv")
    assert f"activated={target}" in proc.stdout
    return target, proc.stderr


def builds(repo: Path) -> int:
    log = repo.parent / "pip.log"
    return log.read_text().count(" -r ") if log.exists() else 0


def test_another_python_reuses_the_environment_of_the_same_requirements(checkout):
    first, err = source_env(checkout, "system")
    assert builds(checkout) == 1
    assert f"building a new environment with Python 3.11.2 ({checkout.parent / 'system' / 'python3'}) in {first}" \
           in err and "~6 GB" in err and "about 5 minutes" in err
    again, err = source_env(checkout, "system")
    assert again == first and builds(checkout) == 1 and err == ""  # a second source is silent

    # A shell whose python3 is another interpreter: no second build, .venv stays, one line says why.
    other, err = source_env(checkout, "pyenv")
    assert other == first and builds(checkout) == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[env] using {first} (Python 3.11.2, same requirements.txt); "
                                                    "your python3 is Python 3.11.9: set QAREP_PYTHON=python3")

    # Asked for explicitly, that interpreter gets its own environment (and says so first).
    own, err = source_env(checkout, "pyenv", qarep_python="python3")
    assert own != first and builds(checkout) == 2 and "building a new environment with Python 3.11.9" in err
    assert source_env(checkout, "pyenv")[0] == own  # from now on, its own environment


def test_changed_requirements_build_anew_even_with_another_python(checkout):
    first, _ = source_env(checkout, "system")
    with open(checkout / "requirements.txt", "a") as f:
        f.write("# a changed pin\n")
    second, err = source_env(checkout, "pyenv")
    assert second != first and builds(checkout) == 2 and "building a new environment with Python 3.11.9" in err


def test_an_incomplete_environment_is_not_reused(checkout):
    first, _ = source_env(checkout, "system")
    (Path(first) / ".complete").unlink()  # a build that died half-way
    second, err = source_env(checkout, "pyenv")
    assert second != first and builds(checkout) == 2 and "[env] using" not in err


def test_a_failed_install_is_not_marked_complete(checkout):
    proc = run_env(checkout, "system", PIP_FAIL="1")
    assert proc.returncode != 0 and "activated=" not in proc.stdout
    assert "[env] building" in proc.stderr and "failed (see pip's messages above)" in proc.stderr
    assert not list((checkout.parent / "cache").glob("venv-*/.complete")) and not (checkout / ".venv").exists()
    first, _ = source_env(checkout, "system")  # the next source builds it again, this time to the end
    assert (Path(first) / ".complete").is_file() and builds(checkout) == 1  # the failed run stopped at pip's upgrade
