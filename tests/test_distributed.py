"""RigL under torchrun with 2 CPU ranks (gloo) keeps identical masks on both ranks."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed


def test_rigl_masks_identical_across_ranks(tmp_path: Path) -> None:
    script = Path(__file__).parent / "helpers" / "ddp_rigl.py"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun must be installed with torch"
    with socket.socket() as sock:  # a free port; torchrun's port 0 hangs with the static rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert len(r0["hashes"]) >= 8  # updates at steps 5, 10, ..., 45 (end = 0.75 * 60)
    assert r0["hashes"] == r1["hashes"]
    assert r0["nnz"] == r1["nnz"]
