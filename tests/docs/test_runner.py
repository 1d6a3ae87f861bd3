"""The snippet runner itself: a page that does not do what it says fails, naming where."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs.runner import SnippetFailed, matches, run_page

FENCE = "```"


def page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text.replace("~~~", FENCE))
    return path


def test_a_python_snippet_that_raises_fails_the_page_at_its_line(tmp_path: Path) -> None:
    broken = page(
        tmp_path,
        "# A page\n\n~~~python\nx = 1\n~~~\n\nText.\n\n~~~python\nassert x == 2, 'x is 1'\n~~~\n",
    )
    with pytest.raises(SnippetFailed, match=r"page\.md:9 \(python\) raised:(?s:.*)x is 1"):
        run_page(broken)


def test_a_command_whose_output_differs_fails_showing_both(tmp_path: Path) -> None:
    broken = page(tmp_path, "~~~console\n$ echo hello\ngoodbye\n~~~\n")
    with pytest.raises(SnippetFailed, match=r"(?s)page\.md:2: \$ echo hello.*goodbye.*got:\nhello"):
        run_page(broken)


def test_a_command_that_fails_fails_unless_its_status_is_expected(tmp_path: Path) -> None:
    with pytest.raises(SnippetFailed, match="exit status 3"):
        run_page(page(tmp_path, "~~~console\n$ echo no; exit 3\nno\n~~~\n"))
    run_page(page(tmp_path, "~~~console\n$ echo no; exit 3\nno\n[3]\n~~~\n"))


def test_ellipses_match_lines_and_text() -> None:
    assert matches(["a", "...", "d"], "a\nb\nc\nd\n")
    assert matches(["a", "...", "b"], "a\nb\n")
    assert matches(["took ...s"], "took 1.5s\n")
    assert not matches(["a", "d"], "a\nb\nd\n")
    assert not matches(["took ...s"], "took 1.5 min\n")
    assert not matches(["took ...s"], "took\n1.5s\n")  # text, not lines


def test_files_state_and_environment_carry_through_a_page(tmp_path: Path) -> None:
    run_page(
        page(
            tmp_path,
            "~~~console\n$ export GREETING=hello\n~~~\n\n"
            '~~~python title="greet.py"\nimport os\n\n'
            'print(os.environ["GREETING"], "from greet")\n~~~\n\n'
            "~~~python\nimport greet\n\nvalue = 41\n~~~\n\n"
            "~~~python\nassert value + 1 == 42\n~~~\n\n"
            "~~~console\n$ python greet.py\nhello from greet\n$ ls\ngreet.py\n...\n~~~\n\n"
            "~~~text\nnot run: $ false\n~~~\n",
        )
    )


def test_the_database_and_broker_of_the_environment_are_not_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://elsewhere//")
    monkeypatch.setenv("CELERY_DURABLE_DATABASE_URL", "postgresql://elsewhere/db")
    run_page(
        page(
            tmp_path,
            "~~~console\n$ echo ${CELERY_BROKER_URL:-unset} ${CELERY_DURABLE_DATABASE_URL:-unset}"
            "\nunset unset\n~~~\n",
        )
    )


def test_a_background_command_is_stopped_when_the_page_ends(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    run_page(
        page(
            tmp_path,
            f"~~~console\n$ bash -c 'echo $$ > {pid_file}; exec sleep 300' &\n"
            f"$ for i in $(seq 100); do [ -s {pid_file} ] && break; sleep 0.05; done\n~~~\n",
        )
    )
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_shell_blocks_must_say_whether_they_run(tmp_path: Path) -> None:
    with pytest.raises(SnippetFailed, match=r"page\.md:1 \(sh\)"):
        run_page(page(tmp_path, "~~~sh\nrm -rf build\n~~~\n"))
