"""Load rule files (JSON or YAML, one file or a folder merged) into a ``CompiledPolicy``.

Every problem is collected with its ``file:line`` and field, and the policy is rejected as a
whole if there is any: nothing half-loads. CEL conditions are compiled here, once. Whatever the
files hold, ``load_policy`` returns a policy or raises ``ConfigError``, nothing else.

A cut-off file must not load as a policy that allows more: an entry with no body
(``delete_note:`` and nothing after) and a file with neither ``tools`` nor ``default`` (empty,
only comments) are errors. ``{}`` is the way to write "allowed, no conditions".

Problems name files as they were given (to find them); the compiled entries and rules are
labelled relative to their policy root (the folder given, or the file's own folder), since
those labels reach agents in denials.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from gateway.errors import ConfigError, Problem, SourceLocation
from gateway.located import Node, parse_file
from gateway.policy.cel import DEFAULT_ENGINE, CelCompileError, Engine, cel_shape_problem
from gateway.policy.files import TEST_SUFFIXES, cel_error_line, labelled_files, rule_files
from gateway.policy.matching import glob_regex, globs_overlap, is_glob, split_key
from gateway.policy.model import (
    EFFECTS,
    SCOPES,
    WINDOWS,
    Approval,
    CompiledPolicy,
    Effect,
    LimitSpec,
    Rule,
    ToolEntry,
)
from gateway.policy.schema import Fields
from gateway.printable import visible

__all__ = ["TEST_SUFFIXES", "load_policy", "rule_files"]

_TOP = {"version", "default", "tools", "mode", "description"}
_ENTRY = {
    "action",
    "reason",
    "rules",
    "limits",
    "approval",
    "risk",
    "kind",
    "mode",
    "description",
    "secret_args",
}
_RULE = {"id", "when", "action", "reason", "mode", "approval", "description"}
_LIMIT = {"counter", "window", "max", "scope", "failure_mode"}
_APPROVAL = {"mode", "timeout", "fallback"}
#: The longest window or approval timeout, in seconds (a year).
MAX_SECONDS = 366 * 86400
#: The shortest window, in seconds: shorter ones refill so fast that they limit nothing
#: (``window: 1e-300`` loaded, and its refill rate was infinite).
MIN_WINDOW = 0.001
#: The largest bucket: counts stay whole numbers in Valkey's doubles and Lua, and a larger
#: one limits nothing a caller could reach.
MAX_TOKENS = 1_000_000_000
_RISKS = ("low", "medium", "high")
_KINDS = ("read", "write", "delete", "execute")
#: Longer tool keys are refused: MCP tool names are short, and glob overlap checks recurse.
MAX_KEY_CHARS = 200
_NO_BODY = "entry has no body; write {} for allowed with no conditions"
_UNSEEN_KEY = (
    "a key holds a character that draws nothing (a zero-width, bidi or non-breaking space) or"
    " a part of it begins or ends with a space: it reads as another name, and matches no tool"
    " of that name"
)
_EMPTY_FILE = (
    "no `tools` and no `default`: an empty or cut-off rule file is refused "
    "(write `tools: {}` for a file that is meant to be empty)"
)


class _Loader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.problems: list[Problem] = []
        self.entries: dict[tuple[str | None, str], ToolEntry] = {}
        self.default: tuple[Effect, SourceLocation] | None = None
        self.counters: dict[str, LimitSpec] = {}
        self.rule_ids: dict[str, SourceLocation] = {}
        self.plain_tools: dict[str, Any] = {}
        self.entry_where: dict[tuple[str | None, str], SourceLocation] = {}
        self.label = ""  # the current file's name relative to its policy root

    def labelled(self, where: SourceLocation) -> SourceLocation:
        """The same line, named as agents may see it."""
        return SourceLocation(self.label, where.line)

    def problem(self, where: SourceLocation, field: str, message: str) -> None:
        self.problems.append(Problem(where, field, message))

    def load_file(self, path: Path, display: str, label: str) -> None:
        """One file; an unexpected error is reported as a problem of that file, not raised."""
        self.label = label
        try:
            self._load_file(path, display)
        except Exception as exc:  # the contract: problems, never a raise
            message = f"could not be loaded ({type(exc).__name__})"
            self.problem(SourceLocation(display, 1), "", message)

    def _load_file(self, path: Path, display: str) -> None:
        if not path.exists():
            self.problem(SourceLocation(display, 1), "", "no such file or folder")
            return
        root = parse_file(path, self.problems, display)
        if root is None:
            return
        top = Fields(root, "", self.problems)
        if not top.ok:
            return
        if top.get("tools") is None and top.get("default") is None:
            self.problem(root.where, "", _EMPTY_FILE)
            return
        top.check_known(_TOP)
        version = top.get("version")
        if version is not None and str(version.value) != "1":
            self.problem(
                version.where, "version", f'unsupported version {version.value!r} (use "1")'
            )
        file_mode = top.choice("mode", ("enforce", "shadow"), "enforce") or "enforce"
        default = top.get("default")
        if file_mode != "shadow" or default is None:
            self._default(top)
        elif default.value != "deny":
            # One default decides every unnamed tool: a shadow file's allow would be enforced
            # (its deny is what the default is anyway, and decides nothing).
            msg = "a file in shadow mode cannot set the default to allow (it would be enforced)"
            self.problem(default.where, "default", msg)
        tools = top.get("tools")
        if tools is None:
            return
        if not isinstance(tools.value, dict):
            self.problem(tools.where, "tools", "must be a mapping of tool names to entries")
            return
        for key, node in tools.value.items():
            line = tools.key_lines.get(key, node.where.line)
            self._entry(key, node, SourceLocation(display, line), file_mode)

    def _default(self, top: Fields) -> None:
        node = top.get("default")
        if node is None:
            return
        effect = cast(Effect | None, top.choice("default", ("allow", "deny"), None))
        if effect is None:
            return
        if self.default is not None and self.default[0] != effect:
            first = self.default[1]
            self.problem(
                node.where, "default", f"{effect!r} contradicts {self.default[0]!r} set at {first}"
            )
            return
        self.default = (effect, node.where)

    def _entry(self, key: str, node: Node, where: SourceLocation, file_mode: str) -> None:
        path = f"tools.{key}"
        server, pattern = split_key(key)
        if not pattern or (server is not None and (not server or is_glob(server))):
            self.problem(
                where, path, "a key is `tool`, `server/tool` or a glob; servers are plain names"
            )
            return
        if len(key) > MAX_KEY_CHARS:
            self.problem(where, path, f"a key is at most {MAX_KEY_CHARS} characters")
            return
        if not visible(key) or any(part != part.strip() for part in key.split("/")):
            # `rm\u200b` or `rm ` matched no tool the server lists as `rm`: its deny never
            # applied, under `default: allow` (red-team wave 52), and it reads as `rm`
            self.problem(where, path, _UNSEEN_KEY)
            return
        if node.value is None:
            self.problem(where, path, _NO_BODY)
            return
        entry = Fields(node, path, self.problems)
        if not entry.ok:
            return
        entry.check_known(_ENTRY)
        previous = self.entry_where.get((server, pattern))
        if previous is not None:
            self.problem(where, path, f"defined twice: here and at {previous}")
            return
        self.entry_where[(server, pattern)] = where
        plain = node.plain()
        if file_mode != "enforce" and isinstance(plain, dict):
            # The file's mode is part of what the entry means: it belongs in the revision.
            plain = {"file_mode": file_mode, **plain}
        self.plain_tools[key] = plain
        action = entry.choice("action", EFFECTS, None)
        mode = entry.choice("mode", ("enforce", "shadow"), file_mode) or file_mode
        # A rule with no mode of its own is tried as its entry is: in an entry that names its
        # mode, as part of it (an entry marked `enforce` in a shadow file enforced its allow
        # while its deny rules stayed in shadow, and the call they named ran: red-team wave
        # 66; a shadow entry's rules are tried as that entry would decide); else as its file.
        rules = tuple(
            self._rules(entry, path, file_mode if entry.get("mode") is None else "enforce")
        )
        built = ToolEntry(
            key=key,
            server=server,
            pattern=pattern,
            is_glob=is_glob(pattern),
            where=self.labelled(where),
            action=action,  # type: ignore[arg-type]
            reason=entry.string("reason"),
            rules=rules,
            limits=tuple(self._limits(entry, path)),
            approval=self._approval(entry, path),
            risk=entry.choice("risk", _RISKS, None),
            kind=entry.choice("kind", _KINDS, None),
            mode=mode,  # type: ignore[arg-type]
            matcher=glob_regex(pattern) if is_glob(pattern) else None,
            secret_args=self._secret_args(entry, path),
        )
        self.entries[(server, pattern)] = built

    def _empty(self, node: Node, path: str) -> None:
        """An empty list says nothing: beside a glob that holds or denies, ``delete_note:
        {rules: []}`` (a placeholder) decided as ``{}``, allowed with no conditions
        (red-team wave 63). Refused: ``{}`` is how to say that."""
        self.problem(
            node.where, path, "an empty list: remove it (write {} for allowed, no conditions)"
        )

    def _rules(self, entry: Fields, path: str, entry_mode: str) -> Iterable[Rule]:
        node = entry.get("rules")
        if node is None:
            return
        if not isinstance(node.value, list):
            self.problem(node.where, f"{path}.rules", "must be a list of rules")
            return
        if not node.value:
            self._empty(node, f"{path}.rules")
        for i, item in enumerate(node.value):
            rule = self._rule(item, f"{path}.rules[{i}]", entry_mode)
            if rule is not None:
                yield rule

    def _rule(self, item: Node, path: str, entry_mode: str) -> Rule | None:
        fields = Fields(item, path, self.problems)
        if not fields.ok:
            return None
        fields.check_known(_RULE)
        rule_id = fields.string("id")
        if rule_id is not None:
            seen = self.rule_ids.get(rule_id)
            if seen is not None:
                self.problem(item.where, f"{path}.id", f"rule id {rule_id!r} also used at {seen}")
            self.rule_ids[rule_id] = item.where
        action = fields.choice("action", EFFECTS, None)
        if action is None and fields.get("action") is None:
            self.problem(item.where, f"{path}.action", "a rule needs an action")
        return Rule(
            action=action or "deny",  # type: ignore[arg-type]
            where=self.labelled(item.where),
            id=rule_id,
            when=self._condition(fields, path),
            reason=fields.string("reason"),
            mode=fields.choice("mode", ("enforce", "shadow"), entry_mode),  # type: ignore[arg-type]
            approval=self._approval(fields, path),
        )

    def _condition(self, fields: Fields, path: str) -> Any:
        node = fields.get("when")
        if node is None:
            return None
        if not isinstance(node.value, str) or not node.value.strip():
            self.problem(node.where, f"{path}.when", "must be a CEL expression (a string)")
            return None
        shape = cel_shape_problem(node.value)
        if shape is not None:
            self.problem(node.where, f"{path}.when", f"CEL: {shape}")
            return None
        try:
            return self.engine.compile(node.value)
        except CelCompileError as exc:
            where = SourceLocation(node.where.file, cel_error_line(node, exc))
            column = f" (column {exc.column})" if exc.message.startswith("does not parse") else ""
            self.problem(where, f"{path}.when", f"CEL: {exc.message}{column}")
            return None

    def _limits(self, entry: Fields, path: str) -> Iterable[LimitSpec]:
        node = entry.get("limits")
        if node is None:
            return
        if not isinstance(node.value, list):
            self.problem(node.where, f"{path}.limits", "must be a list of limits")
            return
        if not node.value:
            self._empty(node, f"{path}.limits")
        for i, item in enumerate(node.value):
            spec = self._limit(item, f"{path}.limits[{i}]")
            if spec is not None:
                yield spec

    def _limit(self, item: Node, path: str) -> LimitSpec | None:
        fields = Fields(item, path, self.problems)
        if not fields.ok:
            return None
        fields.check_known(_LIMIT)
        counter = fields.string("counter", required=True)
        maximum = fields.positive_int("max", required=True)
        if maximum is not None and maximum > MAX_TOKENS:
            where = getattr(fields.get("max"), "where", item.where)
            self.problem(where, f"{path}.max", f"at most {MAX_TOKENS:,}, not {maximum:,}")
            maximum = None
        window = self._window(fields, path)
        scope = fields.choice("scope", SCOPES, "grant")
        failure = fields.choice("failure_mode", ("closed", "open"), "closed")
        if counter is None or maximum is None or window is None or scope is None:
            return None
        spec = LimitSpec(counter, window, maximum, scope, failure, item.where)  # type: ignore[arg-type]
        first = self.counters.setdefault(counter, spec)
        if (first.max, first.window, first.scope) != (spec.max, spec.window, spec.scope):
            self.problem(
                item.where, path, f"counter {counter!r} is defined differently at {first.where}"
            )
        return spec

    def _window(self, fields: Fields, path: str) -> float | None:
        node = fields.get("window")
        if node is None:
            self.problem(
                fields.node.where, f"{path}.window", "missing (second|minute|hour|day or seconds)"
            )
            return None
        value = node.value
        if isinstance(value, str) and value in WINDOWS:
            return WINDOWS[value]
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            if value > MAX_SECONDS:  # 1e308 s overflowed the wait told to a refused caller
                self.problem(node.where, f"{path}.window", f"at most {MAX_SECONDS} s (a year)")
                return None
            if value < MIN_WINDOW:
                self.problem(node.where, f"{path}.window", f"at least {MIN_WINDOW} s")
                return None
            return float(value)
        words = "|".join(WINDOWS)
        self.problem(
            node.where, f"{path}.window", f"unknown window {value!r} (use {words} or seconds > 0)"
        )
        return None

    def _secret_args(self, entry: Fields, path: str) -> tuple[str, ...]:
        """``secret_args: [password, auth.token]``: dotted paths into the arguments."""
        node = entry.get("secret_args")
        if node is None:
            return ()
        if not isinstance(node.value, list):
            self.problem(node.where, f"{path}.secret_args", "must be a list of argument paths")
            return ()
        if not node.value:
            self._empty(node, f"{path}.secret_args")
        out: list[str] = []
        for i, item in enumerate(node.value):
            value = item.value
            if not isinstance(value, str) or not all(value.split(".")):
                self.problem(
                    item.where,
                    f"{path}.secret_args[{i}]",
                    f"must be an argument path like password or auth.token, not {value!r}",
                )
                continue
            out.append(value)
        return tuple(out)

    def _approval(self, fields: Fields, path: str) -> Approval | None:
        node = fields.get("approval")
        if node is None:
            return None
        sub = Fields(node, f"{path}.approval", self.problems)
        if not sub.ok:
            return None
        sub.check_known(_APPROVAL)
        mode = sub.choice("mode", ("wait", "retry", "elicit"), "wait")
        timeout = sub.positive_number("timeout")
        if timeout is not None and timeout > MAX_SECONDS:
            where = sub.get("timeout")
            assert where is not None
            msg = f"at most {MAX_SECONDS} s (a year)"
            self.problem(where.where, f"{path}.approval.timeout", msg)
            timeout = None
        fallback = sub.choice("fallback", ("wait", "retry"), "retry")
        given = sub.get("fallback")
        if given is not None and mode != "elicit":
            msg = "fallback applies to mode: elicit only (what to do when a client cannot be asked)"
            self.problem(given.where, f"{path}.approval.fallback", msg)
        return Approval(mode or "wait", timeout or 300.0, fallback or "retry")  # type: ignore[arg-type]

    def check_globs(self) -> None:
        globs = [e for e in self.entries.values() if e.is_glob]
        for i, a in enumerate(globs):
            for b in globs[i + 1 :]:
                same_level = a.server == b.server and a.specificity == b.specificity
                if same_level and globs_overlap(a.pattern, b.pattern):
                    b_where = self.entry_where[(b.server, b.pattern)]
                    msg = f"ties with {b.key!r} at {b_where}: equally specific globs that overlap"
                    self.problem(self.entry_where[(a.server, a.pattern)], f"tools.{a.key}", msg)

    def build(self, sources: Sequence[str]) -> CompiledPolicy:
        default: Effect = self.default[0] if self.default else "deny"
        normal = {"version": "1", "default": default, "tools": self.plain_tools}
        canonical = json.dumps(normal, sort_keys=True, separators=(",", ":"), default=str)
        revision = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        exact = {k: e for k, e in self.entries.items() if not e.is_glob}
        globs = sorted(
            (e for e in self.entries.values() if e.is_glob),
            key=lambda e: e.specificity,
            reverse=True,
        )
        return CompiledPolicy(
            engine=self.engine,
            default=default,
            exact=exact,
            globs=tuple(globs),
            revision=revision,
            sources=tuple(sources),
            default_where=self.default[1] if self.default else None,
        )


def load_policy(paths: Iterable[str | Path], engine: Engine = DEFAULT_ENGINE) -> CompiledPolicy:
    """Load and compile rule files; raise ``ConfigError`` listing every problem."""
    loader = _Loader(engine)
    files = labelled_files(paths)
    if not files:
        raise ConfigError([Problem(SourceLocation("<policy>", 1), "", "no rule files given")])
    for path, display, label in files:
        loader.load_file(path, display, label)
    loader.check_globs()
    if loader.problems:
        raise ConfigError(loader.problems)
    return loader.build([display for _, display, _ in files])
