"""Shell command lines as agents' tools write them: the simple commands in
them, the files they redirect to, and the scripts nested inside (`eval`,
`sh -c`).

tree-sitter-bash parses (it never refuses input: what it cannot parse it
skips, and `Script.errors` says so); this module only reads the tree.
A word is kept as a pattern: literal text with holes where the shell would
expand something at run time ($VAR, $(...), globs, ~), so that it can be
matched against the argv a process really ran.

Sans-I/O and pure: `parse(text)` -> `Script`; `shell_script(argv)` finds
the script a `sh -c` / `bash -lc` process runs; `match_argv(form, argv)`
says how well an argv is one of a script's commands.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

__all__ = ["Word", "SimpleCommand", "Redirect", "Script", "parse", "shell_script", "match_argv", "embedding", "argv_forms",
           "SHELLS"]

MAX_SOURCE = 256 << 10  # characters of one script parsed; the rest is not looked at
MAX_NESTING = 4  # eval inside sh -c inside eval ...
MAX_COMMANDS = 4096

SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "posh", "yash", "rbash"))
# Programs that run a script named by their first argument: a shebang puts
# them before the script's own argv ([/bin/bash, ./build.sh]).
_INTERPRETER = re.compile(r"(?:[a-z]*sh|env|python[0-9.]*|pypy[0-9.]*|node|nodejs|bun|deno|perl[0-9.]*|ruby[0-9.]*|"
                          r"php[0-9.]*|lua[0-9.]*|tclsh[0-9.]*|Rscript|osascript|busybox)")
# Redirect operators that write to the file they name.
_WRITES = frozenset((">", ">>", ">|", "&>", "&>>", "<>", ">&"))
# Node types whose value is only known at run time.
_DYNAMIC = frozenset(("simple_expansion", "expansion", "command_substitution", "process_substitution",
                      "arithmetic_expansion", "brace_expression"))
_ARGUMENT_SKIP = frozenset(("variable_assignment", "file_redirect", "heredoc_redirect", "herestring_redirect",
                            "comment"))


@dataclass(frozen=True, slots=True)
class Word:
    """One shell word: literal pieces, None where the shell expands;
    `literal`, the word's value when nothing in it is expanded."""

    parts: tuple[str | None, ...]
    literal: str | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        literal = None if None in self.parts else "".join(p for p in self.parts if p is not None)
        object.__setattr__(self, "literal", literal)

    def matches(self, value: str) -> bool:
        literal = self.literal
        if literal is not None:
            return literal == value
        return _pattern(self.parts).fullmatch(value) is not None

    def show(self) -> str:
        return "".join("…" if p is None else p for p in self.parts)


@lru_cache(maxsize=1024)
def _pattern(parts: tuple[str | None, ...]) -> re.Pattern[str]:
    return re.compile("".join(".*" if p is None else re.escape(p) for p in parts), re.S)


@dataclass(frozen=True, slots=True)
class SimpleCommand:
    """A command as the shell runs it. `forms`: its words (without the
    VAR=value prefix), then the command each runner in front of it runs
    (`sudo -u x timeout 5 curl y`: that, `timeout 5 curl y`, `curl y`)."""

    text: str
    forms: tuple[tuple[Word, ...], ...]

    @property
    def words(self) -> tuple[Word, ...]:
        return self.forms[0]

    @property
    def program(self) -> str | None:
        """The program the innermost form runs, when it is literal."""
        inner = self.forms[-1]
        return inner[0].literal if inner else None


@dataclass(frozen=True, slots=True)
class Redirect:
    """A file the script writes through the shell (`> f`, `>> f`, `>| f`,
    `&> f`) or through `tee`."""

    op: str
    target: Word
    text: str


@dataclass(slots=True)
class Script:
    source: str
    commands: list[SimpleCommand] = field(default_factory=list)  # in order, nested ones in place
    redirects: list[Redirect] = field(default_factory=list)
    nested: list[str] = field(default_factory=list)  # bodies of eval and sh -c, as the shell sees them
    heredocs: list[str] = field(default_factory=list)
    errors: bool = False  # parts the parser could not read were skipped

    def keys(self) -> list[tuple[tuple[str | None, ...], ...]]:
        """Each command's words, for comparing scripts by structure."""
        return [tuple(w.parts for w in c.words) for c in self.commands]


_parser: Parser | None = None


def _get_parser() -> Parser:
    global _parser
    if _parser is None:
        _parser = Parser(Language(tree_sitter_bash.language()))
    return _parser


@lru_cache(maxsize=512)
def parse(source: str) -> Script:
    """The commands, redirects and nested scripts of `source` (never raises)."""
    script = Script(source)
    _parse_into(script, source, 0)
    return script


def _parse_into(script: Script, source: str, depth: int) -> None:
    if len(source) > MAX_SOURCE:
        source = source[:MAX_SOURCE]
        script.errors = True
    data = source.encode("utf-8", "surrogatepass")
    tree = _get_parser().parse(data)
    root = tree.root_node
    if root.has_error:
        script.errors = True
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        t = node.type
        if t == "command":
            command = _command(node, data)
            if command is not None and len(script.commands) < MAX_COMMANDS:
                script.commands.append(command)
                _nested(script, command, depth)
                _tee(script, command)
        elif t == "file_redirect":
            _redirect(script, node, data)
        elif t == "heredoc_body":
            script.heredocs.append(_text(node, data))
        stack.extend(reversed(node.children))


def _nested(script: Script, command: SimpleCommand, depth: int) -> None:
    """`eval ARGS` and `sh -c SCRIPT`: what they run is parsed in place."""
    if depth >= MAX_NESTING:
        return
    inner = command.forms[-1]
    literals = [w.literal for w in inner]
    if not literals or literals[0] is None:
        return
    program = os.path.basename(literals[0])
    body: str | None = None
    if program == "eval" and len(inner) > 1 and all(v is not None for v in literals[1:]):
        body = " ".join(v for v in literals[1:] if v is not None)
    elif program in SHELLS and all(v is not None for v in literals):
        found = shell_script([v for v in literals if v is not None])
        body = found[0] if found else None
    if body is not None:
        script.nested.append(body)
        _parse_into(script, body, depth + 1)


def _tee(script: Script, command: SimpleCommand) -> None:
    inner = command.forms[-1]
    if not inner or inner[0].literal is None or os.path.basename(inner[0].literal) != "tee":
        return
    append = any(w.literal in ("-a", "--append") for w in inner[1:])
    for w in inner[1:]:
        v = w.literal
        if v is not None and v.startswith("-"):
            continue
        script.redirects.append(Redirect("tee -a" if append else "tee", w, f"tee {w.show()}"))


def _redirect(script: Script, node: Node, data: bytes) -> None:
    op = None
    target: Node | None = None
    for child in node.children:
        if child.type == "file_descriptor":
            continue
        if not child.is_named and op is None:
            op = child.type
        elif child.is_named:
            target = child
    if op not in _WRITES or target is None or target.type == "number":
        return
    word = _word(target, data)
    if op == ">&" and word.literal == "-":
        return
    script.redirects.append(Redirect(op, word, _text(node, data)))


def _command(node: Node, data: bytes) -> SimpleCommand | None:
    words: list[Word] = []
    for child in node.named_children:
        t = child.type
        if t in _ARGUMENT_SKIP:
            continue
        if t == "command_name":
            inner = child.named_children
            words.append(_word(inner[0], data) if inner else Word((_text(child, data),)))
        elif words:
            words.append(_word(child, data))
    if not words:
        return None
    return SimpleCommand(_text(node, data), _forms(tuple(words)))


def _text(node: Node, data: bytes) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "replace")


# -- words ------------------------------------------------------------------

_ANSI_C = re.compile(r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|c.|.)", re.S)
_ANSI_C_SIMPLE = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                  "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _ansi_c(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] in "xuU":
            try:
                return chr(int(e[1:], 16))
            except (ValueError, OverflowError):
                return m.group(0)
        if e[0] in "01234567":
            return chr(int(e, 8) & 0xFF)
        if e[0] == "c" and len(e) == 2:
            return chr(ord(e[1]) & 0x1F)
        return _ANSI_C_SIMPLE.get(e, m.group(0))

    return _ANSI_C.sub(one, body)


def _unquoted(text: str, first: bool) -> list[str | None]:
    """An unquoted piece of a word: backslashes quote, globs and a leading ~
    expand."""
    out: list[str | None] = []
    buf: list[str] = []

    def hole() -> None:
        if buf:
            out.append("".join(buf))
            buf.clear()
        if not out or out[-1] is not None:
            out.append(None)

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] != "\n":
                buf.append(text[i + 1])
            i += 2
            continue
        if c in "*?[" or (c == "~" and i == 0 and first):
            hole()
            if c == "~":  # ~ and ~user: up to the first slash
                while i + 1 < n and text[i + 1] != "/":
                    i += 1
        else:
            buf.append(c)
        i += 1
    if buf:
        out.append("".join(buf))
    return out


def _double_quoted(text: str) -> str:
    """The inside of "...": only \\ before $ ` " \\ and newline quotes."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
            if text[i + 1] != "\n":
                out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _word(node: Node, data: bytes) -> Word:
    parts = _parts(node, data, True)
    merged: list[str | None] = []
    for p in parts:
        if p is None:
            if not merged or merged[-1] is not None:
                merged.append(None)
        elif merged and (last := merged[-1]) is not None:
            merged[-1] = last + p
        else:
            merged.append(p)
    return Word(tuple(merged))


def _parts(node: Node, data: bytes, first: bool) -> list[str | None]:
    t = node.type
    text = _text(node, data)
    if t in ("word", "number"):
        return _unquoted(text, first)
    if t == "raw_string":
        return [text[1:-1]]
    if t == "ansi_c_string":
        return [_ansi_c(text[2:-1])]
    if t in _DYNAMIC:
        return [None]
    if t == "translated_string":
        inner = node.named_children
        return _parts(inner[0], data, False) if inner else [text[2:-1]]
    if t == "string":
        out: list[str | None] = []
        pos = node.start_byte + 1
        end = node.end_byte - 1
        for child in node.children:
            if not child.is_named:
                continue
            if child.start_byte > pos:
                out.append(_double_quoted(data[pos:child.start_byte].decode("utf-8", "replace")))
            if child.type == "string_content":
                out.append(_double_quoted(_text(child, data)))
            else:
                out.append(None)
            pos = child.end_byte
        if end > pos:
            out.append(_double_quoted(data[pos:end].decode("utf-8", "replace")))
        return out or [""]
    if t == "concatenation":
        kids = node.children
        # {a,b} and {1..3}: brace expansion makes several words of one
        if any(k.type == "word" and _text(k, data) == "{" for k in kids) and \
                any(k.type == "word" and _text(k, data) == "}" for k in kids):
            return [None]
        out = []
        for i, child in enumerate(kids):
            out += _parts(child, data, first and i == 0)
        return out
    return [None]


# -- runners -----------------------------------------------------------------

# For each runner: options that take a value, and whether a leading
# positional argument comes before the command (timeout's duration).
_RUNNERS: dict[str, tuple[frozenset[str], int]] = {
    "env": (frozenset(("-u", "--unset", "-C", "--chdir", "-S", "--split-string")), 0),
    "timeout": (frozenset(("-s", "--signal", "-k", "--kill-after")), 1),
    "nice": (frozenset(("-n", "--adjustment")), 0),
    "ionice": (frozenset(("-c", "--class", "-n", "--classdata", "-p", "--pid")), 0),
    "sudo": (frozenset(("-u", "--user", "-g", "--group", "-C", "--close-from", "-D", "--chdir", "-h", "--host",
                        "-p", "--prompt", "-r", "--role", "-t", "--type", "-U", "--other-user", "-T",
                        "--command-timeout")), 0),
    "doas": (frozenset(("-u", "-C")), 0),
    "xargs": (frozenset(("-a", "--arg-file", "-d", "--delimiter", "-E", "-I", "-L", "--max-lines", "-n",
                         "--max-args", "-P", "--max-procs", "-s", "--max-chars", "--process-slot-var")), 0),
    "nohup": (frozenset(), 0),
    "time": (frozenset(("-f", "--format", "-o", "--output")), 0),
    "command": (frozenset(), 0),
    "builtin": (frozenset(), 0),
    "exec": (frozenset(("-a",)), 0),
    "stdbuf": (frozenset(("-i", "-o", "-e", "--input", "--output", "--error")), 0),
    "setsid": (frozenset(), 0),
    "taskset": (frozenset(), 1),
    "chrt": (frozenset(), 1),
    "unbuffer": (frozenset(), 0),
    "flock": (frozenset(("-w", "--timeout", "-E", "--conflict-exit-code")), 1),
    "strace": (frozenset(("-o", "-e", "-p", "-s", "-u", "-E", "-P", "-a", "-I")), 0),
    "ltrace": (frozenset(("-o", "-e", "-p", "-s", "-u", "-a", "-n")), 0),
    "firejail": (frozenset(), 0),
    "catchsegv": (frozenset(), 0),
    "numactl": (frozenset(), 0),
}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _unwrap(words: tuple[Word, ...]) -> tuple[Word, ...] | None:
    """The command a runner (env, timeout, sudo, xargs, ...) runs, if words
    start with one and it is known; None otherwise."""
    if not words or words[0].literal is None:
        return None
    name = os.path.basename(words[0].literal)
    spec = _RUNNERS.get(name)
    if spec is None:
        return None
    with_value, positional = spec
    i, n = 1, len(words)
    while i < n:
        v = words[i].literal
        if v is None:
            return None
        if v == "--":
            i += 1
            break
        if name == "env" and _ASSIGNMENT.match(v):
            i += 1
            continue
        if v.startswith("-") and len(v) > 1:
            if name == "taskset" and v in ("-c", "--cpu-list"):
                i += 2  # the list, then the command
                positional = 0
                continue
            if "=" not in v and v in with_value:
                i += 2
            elif name == "nice" and v[1:].isdigit():  # nice -5 cmd
                i += 1
            else:
                i += 1
            continue
        break
    i += positional
    if i >= n:
        return None
    return words[i:]


def _forms(words: tuple[Word, ...]) -> tuple[tuple[Word, ...], ...]:
    forms = [words]
    while len(forms) < 8:
        inner = _unwrap(forms[-1])
        if inner is None:
            break
        forms.append(inner)
    return tuple(forms)


# -- processes ----------------------------------------------------------------


def shell_script(argv: list[str]) -> tuple[str, bool] | None:
    """(script, login) when argv is a shell running a script given with -c
    (`bash -c S`, `bash -lc S`, `sh -e -c S`, `-bash -c S`); login: it
    reads profile scripts first (-l, --login, -i, or a leading dash)."""
    if len(argv) < 3:
        return None
    name = os.path.basename(argv[0])
    login = name.startswith("-")
    if name.lstrip("-") not in SHELLS:
        return None
    has_c = False
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--" or a == "-":
            i += 1
            break
        if a.startswith("--"):
            if a in ("--login", "-l"):
                login = True
            elif a == "--rcfile" or a == "--init-file":
                i += 1
            i += 1
            continue
        if a[:1] in "-+" and len(a) > 1:
            flags = a[1:]
            if "c" in flags:
                has_c = True
            if "l" in flags or "i" in flags:
                login = True
            if "o" in flags or "O" in flags:  # -o option takes a name
                i += 1
            i += 1
            continue
        break
    if not has_c or i >= len(argv):
        return None
    return argv[i], login


def _program_matches(word: Word, arg: str) -> bool:
    literal = word.literal
    if literal is None:
        return False
    return literal == arg or os.path.basename(literal) == os.path.basename(arg)


def match_argv(form: tuple[Word, ...], argv: list[str]) -> int:
    """3: argv is the form word for word; 2: the same program, with every
    literal word of the form in it, in order (globs, $VAR and xargs add
    arguments); 0: neither. An interpreter a shebang put in front
    ([/bin/bash, ./build.sh]) is looked past."""
    if not form or not argv:
        return 0
    best = 0
    for skip in range(0, min(3, len(argv))):
        if skip and not _INTERPRETER.fullmatch(os.path.basename(argv[skip - 1])):
            break
        args = argv[skip:]
        if not _program_matches(form[0], args[0]):
            continue
        if len(args) == len(form) and all(w.matches(a) for w, a in zip(form[1:], args[1:])):
            return 3
        j = 1
        ok = True
        for w in form[1:]:
            if w.literal is None:
                continue
            while j < len(args) and args[j] != w.literal:
                j += 1
            if j >= len(args):
                ok = False
                break
            j += 1
        if ok:
            best = 2
    return best


def _bounded(haystack: str, needle: str) -> bool:
    """needle in haystack, not as part of a longer word."""
    start = 0
    word = re.compile(r"\w")
    while True:
        i = haystack.find(needle, start)
        if i < 0:
            return False
        before = haystack[i - 1] if i else ""
        after = haystack[i + len(needle)] if i + len(needle) < len(haystack) else ""
        if not (before and word.match(before) and word.match(needle[0])) and \
                not (after and word.match(after) and word.match(needle[-1])):
            return True
        start = i + 1


def embedding(script: Script, command: str) -> tuple[int, str] | None:
    """How a shell's script holds a tool's command: (strength, how).
    3: it evals exactly that (the quoting undone); 2: the command's text is
    in it; 1: its commands, in the same order. None: it does not."""
    c = command.strip()
    if not c:
        return None
    if script.source.strip() == c:
        return 3, "it is the tool's command"
    for body in script.nested:
        if body.strip() == c:
            return 3, "inside eval" if "eval" in script.source else "inside a nested shell"
    if _bounded(script.source, c):
        return 2, "verbatim"
    for body in script.nested:
        if _bounded(body, c):
            return 2, "inside eval" if "eval" in script.source else "inside a nested shell"
    keys = parse(c).keys()
    if keys:
        theirs = script.keys()
        n = len(keys)
        for i in range(len(theirs) - n + 1):
            if theirs[i:i + n] == keys:
                return 1, "its commands, in order"
    return None


def argv_forms(argv: list[str]) -> list[list[str]]:
    """argv, then what each runner at its front runs (`env A=1 bash -lc S`:
    that, then `bash -lc S`)."""
    forms = [list(argv)]
    for words in _forms(tuple(Word((a,)) for a in argv))[1:]:
        forms.append([w.literal or "" for w in words])
    return forms
