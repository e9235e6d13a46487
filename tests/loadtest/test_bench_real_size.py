"""The real-size benchmark's code paths, run at tiny size on the CPU (its figures matter on a GPU node)."""

from loadtest.bench.real_size import main


def test_the_real_size_benchmark_runs_end_to_end_at_tiny_size(capsys):
    assert main(["--device", "cpu", "--preset", "tiny", "--new-tokens", "4", "--blocks", "3", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "real-time factor" in out and "block 3" in out
    assert len([line for line in out.splitlines() if line.split()[:1] in (["1"], ["4"], ["8"], ["16"])]) == 4
