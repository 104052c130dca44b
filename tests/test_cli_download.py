"""`goae download` is the command line face of goae.download (its own tests cover the transfers)."""
import subprocess
import sys


def test_goae_download_asks_for_the_licences_first(tmp_path):
    env = {"GOAE_HOME": str(tmp_path / "home"), "GOAE_WEIGHTS_MIRROR": "http://127.0.0.1:9/", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "goae.cli", "download"], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--accept-licences" in proc.stderr and "nothing was downloaded" in proc.stderr
    assert not (tmp_path / "home" / "weights").exists()
