import subprocess, sys
def test_probe(fresh_postgres_url, tmp_path):
    print(subprocess.run([sys.executable, "/tmp/race_probe.py", fresh_postgres_url], capture_output=True, text=True, cwd="/work/main"))
