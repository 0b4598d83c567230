"""Property: whatever the argument values, ``ddim`` exits 0 with its output, or 2 with one line and no output."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim.app.cli import main

#: Valid values (small, so that a valid run is fast) mixed with invalid ones, per option.
INTS = ["-1", "0", "x", "1.5", "", "99999999999999999999"]
VALUES: dict[str, list[str]] = {
    "--steps": ["1", "2", "3", "1001", "2000", *INTS],
    "--eta": ["0", "0.5", "1", "3", "50", "-1", "nan", "inf", "1e309", "x", ""],
    "-n": ["1", "2", "4", *INTS],
    "--seed": ["0", "7", "4294967295", "4294967296", *INTS],
    "--scale": ["1", "3", "10000000", *INTS],
    "--batch-size": ["1", "3", "99999999999", *INTS],
    "--spacing": ["leading", "trailing", "linspace", "quadratic", "x", ""],
    "--frames": ["1", "2", "3", "100000", *INTS],
    "--first": ["0", "5", "296", "297", *INTS],
    "--fixed-point-iterations": ["0", "1", *INTS],
}
DEVICES = st.one_of(
    st.sampled_from(["cpu", "cpu:0", "cpu:1", "cuda", "cuda:0", "cuda:7", "meta", "mps", "xpu", "", "mkldnn", "-x"]),
    st.text(max_size=8),
)
#: The options each subcommand takes (here), besides --device.
OPTIONS: dict[str, list[str]] = {
    "sample": ["--steps", "--eta", "-n", "--seed", "--scale", "--batch-size", "--spacing"],
    "interpolate": ["--steps", "--frames", "--spacing"],
    "invert": ["--steps", "-n", "--first", "--fixed-point-iterations"],
}
OUTPUT = {"sample": "s.png", "interpolate": "f.png", "invert": "i.png"}


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A subcommand and some of its options, each with a valid or an invalid value."""
    command = draw(st.sampled_from(sorted(OPTIONS)))
    chosen = draw(st.lists(st.sampled_from(OPTIONS[command]), unique=True, max_size=4))
    argv = [command]
    for option in chosen:
        values = VALUES[option]
        if command == "invert" and option == "-n":
            values = ["1", "3", "298", *INTS]
        argv += [option, draw(st.sampled_from(values))]
    if draw(st.booleans()):
        argv += ["--device", draw(DEVICES)]
    if "--steps" not in chosen:
        argv += ["--steps", "2"]  # keep valid runs fast (the default is 50)
    if command == "interpolate" and "--frames" not in chosen:
        argv += ["--frames", "2"]
    if command == "invert" and "-n" not in chosen:
        argv += ["-n", "2"]
    if command == "sample" and "-n" not in chosen:
        argv += ["-n", "2"]
    return command, argv


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_every_command_line_exits_0_or_2_with_one_line(line: tuple[str, list[str]]) -> None:
    command, argv = line
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / OUTPUT[command]
        out, err = io.StringIO(), io.StringIO()
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            code = main([*argv, "--no-progress", "-o", str(output)])  # any exception fails the test
        if code == 0:
            assert output.is_file(), argv
            assert sorted(p.name for p in Path(folder).iterdir()) == [output.name]
        else:
            assert code == 2, (argv, code, err.getvalue())
            lines = err.getvalue().splitlines()
            assert len(lines) == 1 and lines[0].startswith(("ddim: error: ", f"ddim {command}: error: ")), (argv, lines)
            assert not caught, (argv, [str(w.message) for w in caught])
            assert list(Path(folder).iterdir()) == [], argv
