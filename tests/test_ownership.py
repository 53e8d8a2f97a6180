"""The one ownership rule (qarep_dense.fileio.ownership): claim refuses what we did not write and holds a lock,
seal records what was written, a rerun replaces only recorded files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qarep_dense.fileio import RECORD, ClaimError, claim, claim_file, sealed, sha256_file


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_seal_records_each_file_with_its_sha256_and_sealed_checks_them(tmp_path):
    out = tmp_path / "out"
    with claim(out, "tool", {"k": (1, 2)}) as c:
        assert json.loads((out / RECORD).read_text())["status"] == "incomplete"
        write(out / "a.txt", "a")
        write(out / "sub" / "b.txt", "b")
        c.seal({"rows": 2})
    record = json.loads((out / RECORD).read_text())
    assert record["files"] == {"a.txt": sha256_file(out / "a.txt"), "sub/b.txt": sha256_file(out / "sub" / "b.txt")}
    assert sealed(out, "tool", {"k": [1, 2]})["info"] == {"rows": 2}
    assert sealed(out, "other") is None and sealed(out, "tool", {"k": 3}) is None
    (out / "sub" / "b.txt").write_text("edited")
    assert sealed(out, "tool") is None


def test_a_folder_we_did_not_write_is_refused_by_name_and_left_as_it_was(tmp_path):
    for i in range(5):
        write(tmp_path / "theirs" / f"f{i}.txt", "user")
    with pytest.raises(ClaimError, match=r"--out .*theirs: holds files this project did not write "
                                         r"\(f0.txt, f1.txt, f2.txt and 2 more\)"):
        claim(tmp_path / "theirs", "tool", label="--out")
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == [f"f{i}.txt" for i in range(5)]


def test_a_rerun_replaces_only_recorded_files_and_leaves_a_users_files_inside(tmp_path):
    out = tmp_path / "out"
    with claim(out, "tool") as c:
        write(out / "diagnosis" / "plot.png", "1")
        write(out / "stale.txt", "only the first run writes this")
        c.seal()
    notes = write(out / "diagnosis" / "my_notes.txt", "mine")
    with claim(out, "tool") as c:
        assert not (out / "stale.txt").exists() and not (out / "diagnosis" / "plot.png").exists()
        write(out / "diagnosis" / "plot.png", "2")
        c.seal()
    assert notes.read_text() == "mine" and (out / "diagnosis" / "plot.png").read_text() == "2"
    assert set(json.loads((out / RECORD).read_text())["files"]) == {"diagnosis/plot.png"}
    with claim(out, "tool") as c:  # a third run: still the user's, still left alone
        c.seal()
    assert notes.read_text() == "mine" and not (out / "diagnosis" / "plot.png").exists()


def test_a_file_of_ours_edited_since_or_a_users_file_where_we_write_is_refused(tmp_path):
    out = tmp_path / "out"
    with claim(out, "tool") as c:
        write(out / "report.md", "ours")
        c.seal()
    (out / "report.md").write_text("edited by the user")
    with pytest.raises(ClaimError, match=r"report.md was written by an earlier run and changed since"):
        claim(out, "tool")
    assert (out / "report.md").read_text() == "edited by the user"
    (out / "report.md").unlink()
    write(out / "table.csv", "user's")
    with pytest.raises(ClaimError, match=r"table.csv exists and was not written by this project"):
        claim(out, "tool", writes=["table.csv"])


def test_another_owners_folder_is_refused(tmp_path):
    with claim(tmp_path / "out", "ptq_eval") as c:
        c.seal()
    with pytest.raises(ClaimError, match=r"holds the output of 'ptq_eval', not of 'quantize'"):
        claim(tmp_path / "out", "quantize")


def test_a_second_run_gets_in_use_by_pid_and_a_dead_holder_blocks_nothing(tmp_path):
    out = tmp_path / "out"
    first = claim(out, "tool")
    with pytest.raises(ClaimError, match=rf"in use by pid {os.getpid()}"):
        claim(out, "tool")
    first.release()
    # a process that claims and is killed: the kernel drops its lock; its files count as the dead run's
    code = ("import os, pathlib, signal; from qarep_dense.fileio import claim; c = claim(%r, 'tool'); "
            "pathlib.Path(%r).write_text('half'); os.kill(os.getpid(), signal.SIGKILL)") % (str(out), str(out / "x"))
    subprocess.run([sys.executable, "-c", code], check=False)
    user = write(out / "later.txt", "user")  # added after the dead run claimed: not in its 'foreign' list
    with claim(out, "tool") as c:
        assert not (out / "x").exists()  # the dead run's half file was removed
        c.seal()
    assert not user.exists() or user.read_text() == "user"


def test_an_interrupted_run_leaves_an_unsealed_folder_whose_files_the_next_run_replaces(tmp_path):
    out = tmp_path / "out"
    write(out / "sub" / "keep.txt", "user")
    with claim(out, "tool", writes=["a.txt"], shared=True) as c:  # a root that holds a user's files too
        c.seal()
    with claim(out, "tool"):
        write(out / "a.txt", "half")  # no seal: interrupted
    assert sealed(out) is None
    with claim(out, "tool") as c:
        assert not (out / "a.txt").exists() and (out / "sub" / "keep.txt").read_text() == "user"
        c.seal()


def test_claim_file_refuses_a_users_file_a_folder_and_a_file_as_parent(tmp_path):
    user = write(tmp_path / "deploy.pt", "user")
    with pytest.raises(ClaimError, match=r"--save-deploy .*deploy.pt: exists; choose another path"):
        claim_file(user, "eval_seg", label="--save-deploy")
    with pytest.raises(ClaimError, match=r"is a folder; give a file path"):
        claim_file(tmp_path, "eval_seg")
    with pytest.raises(ClaimError, match=r"deploy.pt/x.pt: .*deploy.pt is a file, not a folder"):
        claim_file(user / "x.pt", "eval_seg")
    with claim_file(tmp_path / "new.pt", "eval_seg") as c:
        c.path().write_text("1")
        c.seal()
    with claim_file(tmp_path / "new.pt", "eval_seg") as c:  # ours: replaced
        c.path().write_text("2")
        c.seal()
    assert sealed(tmp_path, name="new.pt") and user.read_text() == "user"


def test_a_place_nobody_may_write_is_refused_cleanly():
    with pytest.raises(ClaimError, match=r"^--out /sys/qarep_dense_test/out: cannot create the folder \("):
        claim("/sys/qarep_dense_test/out", "tool", label="--out")  # sysfs: not even root creates folders there


def test_the_old_record_of_the_main_job_is_adopted(tmp_path):
    out = tmp_path / "demo"
    summary = write(out / "summary.md", "old summary")
    (out / ".demo_written.json").write_text(json.dumps({"summary.md": sha256_file(summary)}))
    write(out / "notes.md", "user")
    with claim(out, "demo") as c:
        assert not summary.exists() and not (out / ".demo_written.json").exists()
        c.seal()
    assert (out / "notes.md").read_text() == "user"


def test_without_a_record_a_whole_folder_must_be_empty_a_shared_one_only_where_we_write(tmp_path):
    write(tmp_path / "out" / "notes.txt", "user")
    with pytest.raises(ClaimError, match=r"holds files this project did not write \(notes.txt\)"):
        claim(tmp_path / "out", "quantize", writes=["report.md"])
    with claim(tmp_path / "out", "dataset", writes=["train"], shared=True) as c:  # a dataset root: allowed
        write(tmp_path / "out" / "train" / "0.png", "x")
        c.seal()
    assert set(json.loads((tmp_path / "out" / RECORD).read_text())["files"]) == {"train/0.png"}
