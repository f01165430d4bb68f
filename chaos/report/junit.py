"""junit.xml for GitLab and Jenkins test reports: one test case per scenario.

Shape: the strictest commonly used schema (windyroad JUnit.xsd, which Jenkins' junit-10.xsd
extends): `<testsuites>` holds one `<testsuite>` per scenario with `<properties>` (seed, protocol,
faults, reproduce), exactly one `<testcase>`, then `<system-out>` and `<system-err>`. Why one suite
per scenario: that schema allows `<properties>` only on a suite, and per-scenario seeds and faults
are the properties worth having. A failed scenario gets `<failure message=...>` naming the anomaly
and the repro command; a harness error gets `<error>`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC
from pathlib import Path

from chaos.atomic import write_atomic
from chaos.report import view
from chaos.report.results import RunResults, ScenarioResult

SUITES_NAME = "chaos"
MESSAGE_LIMIT = 1000  # characters in a failure's message attribute; the body has everything
# Characters XML 1.0 cannot hold at all (a harness error may carry any bytes of a child's output).
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str) -> str:
    return _ILLEGAL_XML.sub("\ufffd", text)


def _set(el: ET.Element, **attrs: object) -> None:
    for key, value in attrs.items():
        el.set(key, _clean(str(value)))


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def classname(result: ScenarioResult) -> str:
    """`chaos.<file stem>`: CI tools group test cases by class, i.e. by scenario file."""
    return f"{SUITES_NAME}.{Path(result.file).stem or result.name}"


def _properties(parent: ET.Element, result: ScenarioResult) -> None:
    props = ET.SubElement(parent, "properties")
    pairs: list[tuple[str, object]] = [
        ("seed", result.seed),
        ("protocol", result.protocol),
        ("file", result.file),
        ("reproduce", result.reproduce),
        ("run_dir", result.run_dir),
    ]
    faults = view.config_faults(result)
    pairs.append(("faults", len(faults)))
    pairs += [(f"fault.{i}", view.fault_label(f)) for i, f in enumerate(faults)]
    for name, value in pairs:
        _set(ET.SubElement(props, "property"), name=name, value=value)


def _headline(error: str) -> str:
    """First and last line of a harness error: what failed and, for a traceback, the exception."""
    lines = [line.strip() for line in error.splitlines() if line.strip()] or ["(no message)"]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _failure_text(result: ScenarioResult, lines: list[str]) -> str:
    body = [*lines, "", f"reproduce: {result.reproduce}", f"artifacts: {result.run_dir}"]
    return _clean("\n".join(body)) + "\n"


def _testcase(suite: ET.Element, result: ScenarioResult) -> None:
    case = ET.SubElement(suite, "testcase")
    _set(case, name=result.name, classname=classname(result), time=_seconds(result.duration_s))
    lines = view.failure_lines(result)
    if result.status == "failed":
        failures = lines or ["failed"]
        message = "; ".join(failures)
        if len(message) > MESSAGE_LIMIT:
            message = message[: MESSAGE_LIMIT - 3] + "..."
        el = ET.SubElement(case, "failure")
        _set(el, message=f"{message} | reproduce: {result.reproduce}", type=view.anomaly_kind(failures[0]))
        el.text = _failure_text(result, failures)
    elif result.status == "error":
        el = ET.SubElement(case, "error")
        _set(el, message=f"harness error: {_headline(result.error or '')} | reproduce: {result.reproduce}")
        _set(el, type="HarnessError")
        el.text = _failure_text(result, lines)


def build(results: RunResults) -> ET.Element:
    """The `<testsuites>` element for a run."""
    totals = results.status_counts()
    root = ET.Element("testsuites")
    _set(
        root,
        name=SUITES_NAME,
        tests=len(results.scenarios),
        failures=totals["failed"],
        errors=totals["error"],
        time=_seconds(results.duration_s),
    )
    for i, result in enumerate(results.scenarios):
        suite = ET.SubElement(root, "testsuite")
        _set(
            suite,
            name=result.name,
            tests=1,
            failures=int(result.status == "failed"),
            errors=int(result.status == "error"),
            time=_seconds(result.duration_s),
            # junit-10.xsd: local time without a zone; we write UTC.
            timestamp=result.started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            hostname=results.host.hostname,
            id=i,
            package=classname(result),
        )
        _properties(suite, result)
        _testcase(suite, result)
        out = ET.SubElement(suite, "system-out")
        out.text = _clean(f"reproduce: {result.reproduce}\nartifacts: {result.run_dir}\n")
        ET.SubElement(suite, "system-err")
    return root


def render(results: RunResults) -> str:
    """junit.xml text (UTF-8 declared)."""
    root = build(results)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(results: RunResults, path: str | Path) -> Path:
    path = Path(path)
    write_atomic(path, render(results))
    return path
