"""A broken pipeline file gets one line naming the file, line, column and the place in
the document; credentials from the environment never show."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pydatatask.cli.command import run_command
from pydatatask.config import load_pipeline, validate_file
from pydatatask.errors import PipelineFileError

GOOD = """\
repositories:
  src: {kind: files, root: data/src}
  out: {kind: files, root: data/out}
tasks:
  copy:
    kind: process
    command: "cp {{ src.path }} {{ out.path }}"
    inputs: {src: src}
    outputs: {out: out}
    retry: {max_attempts: 2, backoff: 1s}
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def one_line_error(path: Path, *, validate: bool = False, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(PipelineFileError) as info:
        (validate_file if validate else load_pipeline)(path, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:"), message
    return message


def test_a_good_file_loads(tmp_path: Path) -> None:
    pipeline = validate_file(write(tmp_path, GOOD), environ={})
    assert list(pipeline.tasks) == ["copy"]
    assert pipeline.tasks["copy"].retry.max_attempts == 2


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks:\n  copy: {kind: process\n  other: 1\n")
    message = one_line_error(path)
    assert re.match(rf"{re.escape(str(path))}:3:\d+: not valid YAML: ", message), message


def test_unknown_key_is_an_error_at_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("backoff: 1s}", "backof: 1s}"))
    message = one_line_error(path)
    assert message.startswith(f"{path}:10:30: tasks.copy.retry.backof: unknown key 'backof'"), message
    assert "backoff" in message  # the keys it knows


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "taskz: {}\n")
    assert one_line_error(path).startswith(f"{path}:11:1: taskz: unknown key 'taskz'")


def test_wrong_type_says_expected_and_found(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("max_attempts: 2", "max_attempts: two"))
    message = one_line_error(path)
    assert message == f"{path}:10:27: tasks.copy.retry.max_attempts: expected a whole number, found 'two'"


def test_wrong_type_of_a_duration(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("backoff: 1s", "backoff: [1]"))
    message = one_line_error(path)
    assert message.startswith(
        f"{path}:10:39: tasks.copy.retry.backoff: expected a string or a number, found a list"
    )


def test_unknown_kind(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("src: {kind: files,", "src: {kind: filez,"))
    message = one_line_error(path)
    assert message.startswith(f"{path}:2:15: repositories.src.kind: expected one of "), message
    assert "found 'filez'" in message


def test_dotted_path_that_does_not_import(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        repositories:
          src: {kind: memory_blobs}
        tasks:
          f:
            kind: function
            function: no_such_module_here.sub:func
            inputs: {src: src}
        """,
    )
    message = one_line_error(path)
    assert message.startswith(
        f"{path}:6:15: tasks.f.function: cannot import 'no_such_module_here.sub:func': No module named"
    ), message


def test_dotted_path_to_a_missing_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        repositories:
          src: {kind: memory_blobs}
        tasks:
          f: {kind: function, function: "os.path:no_such_function", inputs: {src: src}}
        """,
    )
    assert one_line_error(path).startswith(
        f"{path}:4:33: tasks.f.function: cannot import 'os.path:no_such_function'"
    )


def test_missing_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("root: data/src", 'root: "${DATA_ROOT}/in"'))
    message = one_line_error(path)
    assert message.startswith(
        f"{path}:2:28: repositories.src.root: the environment variable DATA_ROOT is not set"
    ), message
    pipeline = load_pipeline(path, environ={"DATA_ROOT": str(tmp_path)})
    assert str(tmp_path / "in") in pipeline.tasks["copy"].links["src"].repository.describe()


def test_undefined_template_name(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("{{ out.path }}", "{{ output.path }}"))
    load_pipeline(path, environ={})  # loading does not render
    message = one_line_error(path, validate=True)
    assert message.startswith(f"{path}:7:14: tasks.copy.command: command template uses an undefined name"), (
        message
    )
    assert "'output' is undefined" in message and "(available: " in message


def test_reference_to_an_undeclared_repository(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("outputs: {out: out}", "outputs: {out: outt}"))
    message = one_line_error(path)
    assert message.startswith(f"{path}:9:20: tasks.copy.outputs.out: no repository named 'outt'"), message


def test_a_cycle_of_views(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        repositories:
          a: {kind: read_only, of: b}
          b: {kind: read_only, of: a}
        tasks:
          t: {kind: process, command: "true", inputs: {a: a}}
        """,
    )
    assert "in a cycle: a -> b -> a" in one_line_error(path)


def test_a_constructor_error_is_reported_at_its_task(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    retry:", "    command_x: 1\n    retry:"))
    assert "unknown key 'command_x'" in one_line_error(path)
    path = write(tmp_path, GOOD.replace('command: "cp {{ src.path }} {{ out.path }}"', 'command: "  "'))
    message = one_line_error(path)
    assert message.startswith(
        f"{path}:5:3: tasks.copy: task 'copy': the command/script must be a non-empty string"
    )


def test_a_literal_credential_is_refused_and_not_repeated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        resources:
          s3: {kind: s3, access_key_id: AKIAEXAMPLE, secret_access_key: "hunter2-literal"}
        tasks:
          t: {kind: process, command: "true"}
        """,
    )
    message = one_line_error(path)
    assert message.startswith(f"{path}:2:33: resources.s3.access_key_id: expected a credential"), message
    assert "AKIAEXAMPLE" not in message and "hunter2" not in message


def test_credentials_never_appear_in_errors_status_or_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cr3t-value-4711"
    monkeypatch.setenv("PDT_TEST_SECRET", secret)
    text = f"""\
    resources:
      s3: {{kind: s3, endpoint: "http://127.0.0.1:9", access_key_id: "${{PDT_TEST_SECRET}}",
           secret_access_key: "${{PDT_TEST_SECRET}}"}}
    repositories:
      src: {{kind: files, root: "{tmp_path}/src"}}
      out: {{kind: files, root: "{tmp_path}/out"}}
    tasks:
      copy:
        kind: process
        command: "cp {{{{ src.path }}}} {{{{ out.path }}}}"
        env: {{TOKEN: "${{PDT_TEST_SECRET}}"}}
        inputs: {{src: src}}
        outputs: {{out: out}}
    """
    path = write(tmp_path, text)
    for command in (
        ["status"],
        ["status", "--json"],
        ["graph"],
        ["graph", "--json"],
        ["graph", "--format", "dot"],
    ):
        assert run_command(["-f", str(path), *command]) == 0
        captured = capsys.readouterr()
        assert secret not in captured.out + captured.err
    # an error whose message would carry the value: it is masked
    bad = write(
        tmp_path,
        text.replace("cp {{ src.path }}", "  ").replace("kind: process", "kind: process\n    cpu: -1"),
        "bad.yaml",
    )
    assert run_command(["validate", "-f", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {bad}:"), captured.err
    assert secret not in captured.out + captured.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ":1:1: the file is empty: expected a mapping with tasks"),
        ("- a\n", ":1:1: expected a mapping at the top of the file"),
        ("tasks: {}\n", ":1:8: tasks: expected at least 1 entry, found 0"),
        ('tasks:\n  t: {command: "true"}\n', ":2:6: tasks.t: missing the key 'kind'"),
        (
            'tasks:\n  t: {kind: process, command: "true", concurrency: 0}\n',
            ":2:52: tasks.t.concurrency: expected at least 1, found 0",
        ),
        (
            'tasks:\n  "bad name": {kind: process, command: "true"}\n',
            ":2:3: tasks: expected letters, digits, '_' and '-', found 'bad name'",
        ),
        (
            "tasks:\n  t: {kind: process, command: a}\n  t: {kind: process, command: b}\n",
            ":3:3: tasks.t: the key 't' is given twice",
        ),
        (
            "tasks: !!python/object:os.system {}\n",
            ":1:8: tasks: the YAML tag !!python/object:os.system is not allowed here",
        ),
        (
            "tasks: {t: {kind: process, command: !!python/name:os.system x}}\n",
            ":1:37: tasks.t.command: cannot read this value",
        ),
    ],
)
def test_shapes_of_broken_files(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert one_line_error(path).startswith(f"{path}{expected}")
