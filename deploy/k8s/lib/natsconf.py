"""A reader for the subset of the NATS server configuration format that nats/auth.conf uses.

Maps (`name { ... }`, `name = { ... }`, `{ k: v, ... }`), lists (`[ ... ]`, items separated by
commas or newlines), quoted strings, `#` comments, `key = value` / `key: value`, the words true
and false, and `$NAME` references: to a block defined earlier in an enclosing map (resolved, as
nats-server does) or, when no such block exists, to an environment variable (kept as the string
`$NAME`). Enough to compare auth.conf with the Helm values; not a general parser.
"""

import re

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n)
  | (?P<punct>[{}\[\],=:])
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<word>[^\s{}\[\],=:"\#]+)
    """,
    re.VERBOSE,
)


def _tokens(text):
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"unexpected character at offset {position}: {text[position:position + 20]!r}")
        position = match.end()
        kind = match.lastgroup
        if kind in ("space", "comment"):
            continue
        value = match.group(kind)
        if kind == "string":
            value = value[1:-1].replace('\\"', '"')
        yield kind, value
    yield "end", None


class _Reader:
    def __init__(self, text):
        self.tokens = list(_tokens(text))
        self.index = 0
        self.scopes = []

    def peek(self):
        return self.tokens[self.index]

    def take(self):
        token = self.tokens[self.index]
        self.index += 1
        return token

    def skip_newlines(self, also_commas=False):
        while self.peek()[0] == "newline" or (also_commas and self.peek() == ("punct", ",")):
            self.take()

    def entries(self, closing):
        result = {}
        self.scopes.append(result)
        while True:
            self.skip_newlines(also_commas=True)
            kind, value = self.peek()
            if (kind, value) == closing or (closing is None and kind == "end"):
                if closing is not None:
                    self.take()
                break
            if kind not in ("word", "string"):
                raise ValueError(f"expected a key, found {value!r}")
            self.take()
            if self.peek() in (("punct", "="), ("punct", ":")):
                self.take()
            result[value] = self.value()
        self.scopes.pop()
        return result

    def value(self):
        self.skip_newlines()
        kind, value = self.take()
        if (kind, value) == ("punct", "{"):
            return self.entries(("punct", "}"))
        if (kind, value) == ("punct", "["):
            items = []
            while True:
                self.skip_newlines(also_commas=True)
                if self.peek() == ("punct", "]"):
                    self.take()
                    return items
                items.append(self.value())
        if kind == "string":
            return value
        if kind == "word":
            if value in ("true", "false"):
                return value == "true"
            if value.startswith("$"):
                for scope in reversed(self.scopes):
                    if value[1:] in scope:
                        return scope[value[1:]]
                return value
            return value
        raise ValueError(f"unexpected {value!r}")


def parse(text):
    """The configuration as nested dicts and lists, block references resolved."""
    return _Reader(text).entries(None)
