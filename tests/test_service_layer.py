"""The control plane's layers (issue 14, docs/architecture.md): controllers
(control_plane/api/, control_plane/ui/) map HTTP to the services (control_plane/sessions.py,
control_plane/messages.py, control_plane/media.py), which REST, the NATS commands and the
UI all call. Read from the source: an import that crosses the layers the wrong way fails
here, not in review."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = (
    "control_plane/sessions.py",
    "control_plane/session_listing.py",
    "control_plane/messages.py",
    "control_plane/media.py",
    "control_plane/numbers.py",
    "control_plane/contacts.py",
    "control_plane/groups.py",
)
CONTROLLERS = tuple(
    str(p.relative_to(ROOT)) for p in sorted((ROOT / "control_plane/api").glob("*.py"))
)
# function-level imports that stay, each with its reason (docs/architecture.md)
DOCUMENTED_NESTED_IMPORTS = {
    # an optional module probed at startup: gzip when it is missing
    ("control_plane/app.py", "brotli"),
}


def imported_modules(path: str) -> set[str]:
    """The modules (and ``module.name`` for ``from module import name``) ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_services_import_no_controller_and_no_web_framework() -> None:
    for path in SERVICES:
        upward = {
            m
            for m in imported_modules(path)
            if m.startswith(("control_plane.api", "control_plane.ui", "litestar"))
            or m in ("control_plane.app", "control_plane.commands")
        }
        assert upward == set(), f"{path} imports {sorted(upward)}"


def test_the_nats_commands_and_the_ui_call_services_not_controllers() -> None:
    """An operation NATS or the UI offers lives in a service (docs/architecture.md, "How
    to add an operation end to end"), never in a REST controller they would import."""
    for path in ("control_plane/commands.py", "control_plane/ui/routes.py"):
        controllers = {m for m in imported_modules(path) if m.startswith("control_plane.api")}
        assert controllers == set(), f"{path} imports {sorted(controllers)}: move it to a service"
    commands = imported_modules("control_plane/commands.py")
    for service in ("control_plane.sessions", "control_plane.messages", "control_plane.media"):
        assert service in commands, f"the NATS commands no longer call {service}"


def test_no_module_of_the_control_plane_hides_an_import_inside_a_function() -> None:
    """A function-level import is how the sessions/messages cycle used to be broken, and
    how commands.py reached the history and media controllers. The one left is listed
    with its reason."""
    nested = set()
    for file in sorted((ROOT / "control_plane").rglob("*.py")):
        path = str(file.relative_to(ROOT))
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Import | ast.ImportFrom)
                and node not in tree.body
                and not _under_type_checking(tree, node)
            ):
                names = [node.module] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names]
                nested.update((path, name) for name in names if name)
    assert nested <= DOCUMENTED_NESTED_IMPORTS, sorted(nested - DOCUMENTED_NESTED_IMPORTS)
    assert ("control_plane/app.py", "brotli") in nested  # the list is not stale


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(
        isinstance(top, ast.If)
        and "TYPE_CHECKING" in ast.unparse(top.test)
        and any(child is node for child in ast.walk(top))
        for top in tree.body
    )


def test_every_controller_and_service_imports_first_in_a_fresh_interpreter() -> None:
    """No import order is needed any more: each module loads first without a cycle."""
    modules = [
        "control_plane.sessions",
        "control_plane.messages",
        "control_plane.media",
        "control_plane.contacts",
        "control_plane.groups",
        "control_plane.commands",
        "control_plane.ui.routes",
        "control_plane.webhooks.lifespan",
        *(p.removesuffix(".py").replace("/", ".") for p in CONTROLLERS),
    ]
    for module in modules:
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{module}: {done.stderr}"


def test_the_names_imported_from_the_controllers_before_are_the_services_own() -> None:
    """Code written against the old layout (before issue 14) still finds its names; they
    are the service's objects, not copies."""
    from control_plane import media, messages, numbers, sessions
    from control_plane.api import chats as api_chats
    from control_plane.api import media as api_media
    from control_plane.api import messages as api_messages
    from control_plane.api import sessions as api_sessions

    moved = [n for n in api_sessions.__all__ if hasattr(sessions, n)]
    assert {
        "call_agent",
        "live_assignment",
        "live_info",
        "load_record",
        "place",
        "running",
        "update_record",
        "view",
    } <= set(moved)
    for name in moved:
        assert getattr(api_sessions, name) is getattr(sessions, name), name
    for name in (
        "queue_message",
        "message_history",
        "check_conversation",
        "safe_filename",
        "_check_media",
        "MAX_FILENAME",
    ):
        assert getattr(api_messages, name) is getattr(messages, name), name
    assert api_messages.normalize_recipient is numbers.normalize_recipient
    assert api_messages.normalize_chat_id is numbers.normalize_chat_id
    for name in ("call_agent", "load_record", "running"):
        assert getattr(api_messages, name) is getattr(sessions, name), name
    assert api_messages.QUERIES is api_sessions.QUERIES
    assert api_chats.mark_read is messages.mark_read
    assert api_chats.show_presence is messages.show_presence
    for name in ("media_link", "MediaLink", "MediaSettingsBody", "MediaSettingsView"):
        assert getattr(api_media, name) is getattr(media, name), name


def test_one_number_rule_for_the_api_and_the_agents() -> None:
    """The API's 422 answers come from contract/chat_ids.py, the rule the agents apply:
    the same digits, the same error codes, no second parser."""
    from contract.chat_ids import ChatIdError, normalize_chat, normalize_phone
    from control_plane.numbers import normalize_chat_id, normalize_recipient
    from control_plane.problems import ProblemError

    assert "phonenumbers" not in imported_modules("control_plane/numbers.py")
    for raw in ("+49 151 2345 6789", "15550001111@s.whatsapp.net", "1 (555) 000-2222"):
        assert normalize_recipient(raw) == normalize_phone(raw)
    for raw in ("120363000000000001@g.us", "123456789@lid", "+1 555 000 3333"):
        assert normalize_chat_id(raw) == normalize_chat(raw)
    for bad, normalize, rule in (
        ("12", normalize_recipient, normalize_phone),
        ("abc@example.com", normalize_chat_id, normalize_chat),
    ):
        try:
            rule(bad)
        except ChatIdError as exc:
            expected = exc.code
        else:
            raise AssertionError(f"{bad!r} passed the rule")
        try:
            normalize(bad)
        except ProblemError as problem:
            assert (problem.status_code, problem.code) == (422, expected)
        else:
            raise AssertionError(f"{bad!r} passed the API")
