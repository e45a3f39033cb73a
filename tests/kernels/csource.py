"""A strict reader of ``cuda/*.cu``: the kernels' own statements, translated to Python and run per thread.

The CPU models of the kernels (``emulate.py``) do not restate any index, shift, offset, mask or
loop bound of a kernel: they run the kernel function's body, parsed from the very text NVRTC
compiles (``loader.read_source``), translated statement by statement into a Python generator
function (one per C++ function; C++ block scopes become uniquely named Python locals). What
this module does NOT take from the source is what the hardware does: ``mma.sync``, ``ldmatrix``,
``cp.async``, ``fma.rn.bf16x2``, ``__byte_perm``, ... are hand models in ``emulate.py`` (written
from the PTX ISA / CUDA Math API, the fragment layouts cross-checked against CuTe), bound here
by name.

The translated subset is what the interpreted kernels use: declarations (scalars, arrays,
``__shared__`` / ``extern __shared__``, references, ``typedef``, ``[&]`` lambdas), assignments
(plain and compound), ``for`` / ``if`` / ``if constexpr`` / ``return`` / ``break`` /
``continue``, ``#pragma unroll`` (ignored), and expressions with C semantics: integer division
truncates, ``int`` / ``u32`` declarations wrap, ``?:`` is lazy, pointer arithmetic moves by the
pointee's size (``Ptr``), ``reinterpret_cast`` changes the pointee type, template arguments and
``::`` are resolved. Anything else (``asm``, ``while``, address-of, ``->``, preprocessor
conditionals inside a function, overloaded callees, an unknown intrinsic) raises
:class:`CSourceError`: the translator refuses instead of guessing.

Numbers: integers are exact Python ints (C conversions applied at declarations and stores);
``float`` arithmetic is carried in float64, so a model is *exact* where the GPU rounds to fp32
(stores to ``float`` memory round to fp32, half conversions round like the kernel's). The GPU
tests own the fp32 rounding behaviour; these models own the indices.

Run-time checks (:class:`ModelError`, an ``AssertionError``): out-of-bounds or misaligned
memory accesses (``Buffer`` / ``Ptr``), writes to inputs, reads of shared memory never written,
use of an unset register (``UNDEF``), a warp whose lanes reach different collectives, a
``__syncthreads`` not reached by every warp, and a step limit against runaway loops.
"""

from __future__ import annotations

import keyword
import re
import struct
import sys
from collections import namedtuple
from dataclasses import dataclass, field


class CSourceError(Exception):
    """The source has a construct the translator does not understand (refused, not guessed), or a
    model asked for something the source does not have."""


class ModelError(AssertionError):
    """A run-time check of a kernel model failed: the kernel as written misbehaves on these inputs."""


# =================================================================================== tokens
Tok = namedtuple("Tok", "kind text line")

_TOKEN_RE = re.compile(
    r"""
    (?P<pp>^[ \t]*\#[^\n]*)
  | (?P<nl>\n)
  | (?P<ws>[ \t\r\f\v]+)
  | (?P<num>0[xX][0-9A-Fa-f]+[uUlL]*|(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|\d+[eE][-+]?\d+[fF]?|\d+[uUlL]*)
  | (?P<id>[A-Za-z_]\w*)
  | (?P<str>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<op>\#\#|\#|<<=|>>=|->|\.\.\.|::|\+\+|--|<<|>>|<=|>=|==|!=|&&|\|\||\+=|-=|\*=|/=|%=|&=|\|=|\^=|[-+*/%&|^~!?:;,.()\[\]{}<>=])
""",
    re.X | re.M,
)
_COMMENT_RE = re.compile(r'//[^\n]*|/\*.*?\*/|("(?:\\.|[^"\\\n])*")', re.S)


def tokenize(text: str, name: str = "<source>") -> list[Tok]:
    """C++ tokens of ``text`` (comments removed, ``\\``-continued lines joined; a preprocessor line is one token)."""
    text = _COMMENT_RE.sub(lambda m: m.group(1) or re.sub(r"[^\n]", " ", m.group(0)), text)
    text = text.replace("\\\n", "  ")
    toks, line, pos = [], 1, 0
    for m in _TOKEN_RE.finditer(text):
        if m.start() != pos:
            raise CSourceError(f"{name}:{line}: cannot tokenize {text[pos:m.start()]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "nl":
            line += 1
        elif kind != "ws":
            toks.append(Tok(kind, m.group(), line))
    if pos != len(text):
        raise CSourceError(f"{name}:{line}: cannot tokenize {text[pos:pos + 20]!r}")
    return toks


def _match(toks: list[Tok], i: int, open_: str, close: str) -> int:
    """Index of the token closing the bracket opened at ``toks[i]``."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].text == open_:
            depth += 1
        elif toks[j].text == close:
            depth -= 1
            if depth == 0:
                return j
    raise CSourceError(f"unbalanced {open_!r} at line {toks[i].line}")


def _split_top(toks: list[Tok], sep: str = ",") -> list[list[Tok]]:
    parts, cur, depth = [], [], 0
    for t in toks:
        if t.text in "([{<" and t.kind == "op":
            depth += 1
        elif t.text in ")]}>" and t.kind == "op":
            depth -= 1
        if t.text == sep and depth == 0:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur or parts:
        parts.append(cur)
    return parts


_DEFINE_RE = re.compile(r"\s*#\s*define\s+(\w+)\(([^)]*)\)(.*)$", re.S)


def expand_macros(toks: list[Tok], name: str = "<source>") -> list[Tok]:
    """Expand the function-like ``#define`` macros of the source (parameter substitution and ``##``
    pasting, recursively), as the preprocessor does for the entry-point macros (``TT_SKINNY`` ...)."""
    macros: dict[str, tuple[list[str], list[Tok]]] = {}
    for t in toks:
        if t.kind == "pp":
            m = _DEFINE_RE.match(t.text)
            if m:
                params = [x.strip() for x in m.group(2).split(",") if x.strip()]
                macros[m.group(1)] = (params, tokenize(m.group(3), f"{name}: macro {m.group(1)}"))

    def expand(seq: list[Tok], depth: int, line: int | None) -> list[Tok]:
        if depth > 16:
            raise CSourceError(f"{name}: macro expansion too deep")
        out, i = [], 0
        while i < len(seq):
            t = seq[i]
            if t.kind == "id" and t.text in macros and i + 1 < len(seq) and seq[i + 1].text == "(":
                j = _match(seq, i + 1, "(", ")")
                params, body = macros[t.text]
                args = [a for a in _split_top(seq[i + 2:j])] if j > i + 2 else []
                if len(args) != len(params):
                    raise CSourceError(f"{name}:{t.line}: macro {t.text} takes {len(params)} arguments")
                subst = []
                for b in body:
                    subst.extend(args[params.index(b.text)] if b.kind == "id" and b.text in params else [b])
                pasted: list[Tok] = []
                k = 0
                while k < len(subst):
                    if subst[k].text == "##":
                        left, right = pasted.pop(), subst[k + 1]
                        text = left.text + right.text
                        pasted.append(Tok("id" if re.fullmatch(r"[A-Za-z_]\w*", text) else "num", text, left.line))
                        k += 2
                    elif subst[k].text == "#":
                        raise CSourceError(f"{name}: stringizing in macro {t.text} is not modelled")
                    else:
                        pasted.append(subst[k])
                        k += 1
                at = t.line if line is None else line
                out.extend(Tok(x.kind, x.text, at) for x in expand(pasted, depth + 1, at))
                i = j + 1
            else:
                out.append(t)
                i += 1
        return out

    return expand(toks, 0, None) if macros else toks


# ============================================================================= declarations
#: Words a declaration's type may be made of (plus the template type parameters in scope).
TYPE_WORDS = {"int", "unsigned", "signed", "long", "short", "char", "float", "double", "bool", "void", "auto",
              "u32", "u64", "uint4", "uint2", "float4", "__nv_bfloat16", "__half", "GroupDiv"}
QUALIFIERS = {"const", "constexpr", "static", "volatile", "extern", "__shared__", "__restrict__", "__device__",
              "__forceinline__", "inline", "__global__", "typename"}
#: C scalar type -> the conversion applied when a value is stored into a variable of that type.
CONVERSIONS = {"int": "_tt_int", "unsigned": "_tt_u32", "unsigned int": "_tt_u32", "u32": "_tt_u32",
               "bool": "_tt_bool", "float": "_tt_float", "double": "_tt_float", "long long": "_tt_i64",
               "long long int": "_tt_i64", "unsigned long long": "_tt_u64", "u64": "_tt_u64",
               "unsigned short": "_tt_u16", "signed char": "_tt_i8", "unsigned char": "_tt_u8", "char": "_tt_i8"}
#: Types whose values are passed through unconverted (vectors, traits, structs, template types).
OPAQUE_TYPES = {"uint4", "uint2", "float4", "auto", "GroupDiv", "void"}


@dataclass
class Param:
    name: str
    base: str            # "u32", "T", "unsigned int", ...
    pointer: bool
    array_ref: bool      # u32 (&dst)[4]


@dataclass
class FuncDef:
    program: "Program"
    name: str
    tparams: list[str]
    params: list[Param]
    body: tuple[int, int]  # token range of the body, braces excluded
    owner: str | None = None  # struct of a member function
    tparam_kinds: list[str] = field(default_factory=list)  # "typename" / "int" / "bool"


@dataclass
class StructDef:
    name: str                 # "GroupDiv", "Half2Traits<__nv_bfloat16>"
    fields: list[tuple[str, str]]
    constants: dict[str, list[Tok]]
    methods: dict[str, FuncDef]


def _base_type(words: list[str]) -> str:
    words = [w for i, w in enumerate(words) if w not in QUALIFIERS and w != "::"
             and not (w == "tt" and i + 1 < len(words) and words[i + 1] == "::")]
    return " ".join(words)


def _parse_param(toks: list[Tok], where: str) -> Param:
    texts = [t.text for t in toks]
    if "(" in texts:  # u32 (&dst)[VW]
        i = texts.index("(")
        if texts[i + 1:i + 2] != ["&"]:
            raise CSourceError(f"{where}: parameter {' '.join(texts)} not understood")
        return Param(texts[i + 2], _base_type(texts[:i]), False, True)
    if "[" in texts:
        texts = texts[: texts.index("[")]
    name = texts[-1]
    typ = [t for t in texts[:-1] if t not in ("*", "&")]
    return Param(name, _base_type(typ), "*" in texts[:-1], False)


class Program:
    """The functions, structs and namespace constants of one inlined CUDA source (``read_source``).

    Args:
        name: file name (messages). text: the source.
    """

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        self.toks = expand_macros(tokenize(text, name), name)
        self.functions: dict[str, list[FuncDef]] = {}
        self.structs: dict[str, StructDef] = {}
        self.constants: list[tuple[str, str, list[Tok]]] = []  # namespace-scope constexprs, in order
        self.templates: set[str] = set()
        self._scan(0, len(self.toks), owner=None)

    # ---------------------------------------------------------------------------- scanning
    def _scan(self, i: int, end: int, owner: StructDef | None) -> None:
        toks = self.toks
        pending: list[tuple[str, str]] | None = None
        while i < end:
            t = toks[i]
            if t.kind == "pp" or t.text == ";":
                if t.text == ";":
                    pending = None
                i += 1
                continue
            if t.text == "template" and i + 1 < end and toks[i + 1].text == "<":
                j = _match(toks, i + 1, "<", ">")
                pending = []
                for part in _split_top(toks[i + 2:j]):
                    if part:
                        pending.append((part[-1].text, part[0].text))
                i = j + 1
                continue
            if t.text == "namespace":
                j = i + 1
                while toks[j].text != "{":
                    j += 1
                k = _match(toks, j, "{", "}")
                self._scan(j + 1, k, owner)
                i = k + 1
                continue
            if t.text == "enum":
                j = i
                while toks[j].text not in ("{", ";"):
                    j += 1
                i = (_match(toks, j, "{", "}") + 1) if toks[j].text == "{" else j + 1
                continue
            if t.text == "struct":
                j = i + 1
                name = toks[j].text
                j += 1
                if toks[j].text == "<":
                    k = _match(toks, j, "<", ">")
                    name += "<" + "".join(x.text for x in toks[j + 1:k]) + ">"
                    j = k + 1
                if toks[j].text == ";":  # forward declaration of a template
                    if pending:
                        self.templates.add(name)
                    pending = None
                    i = j + 1
                    continue
                if toks[j].text != "{":
                    raise CSourceError(f"{self.name}:{t.line}: struct {name} not understood")
                if pending:
                    self.templates.add(name.split("<")[0])
                k = _match(toks, j, "{", "}")
                sd = StructDef(name, [], {}, {})
                self.structs[name] = sd
                self._scan(j + 1, k, sd)
                pending = None
                i = k + 1
                continue
            # one declaration: up to its ';' or '{' (outside parentheses)
            j, depth = i, 0
            while j < end and not (depth == 0 and toks[j].text in (";", "{")):
                if toks[j].text == "(":
                    depth += 1
                elif toks[j].text == ")":
                    depth -= 1
                j += 1
            stmt = toks[i:j]
            texts = [x.text for x in stmt]
            if j < end and toks[j].text == "{":
                k = j - 1
                while k > i and toks[k].text == "const":
                    k -= 1
                if toks[k].text == ")":  # a function definition NAME ( ... ) [const] {
                    open_ = k
                    depth = 0
                    while open_ >= i:
                        if toks[open_].text == ")":
                            depth += 1
                        elif toks[open_].text == "(":
                            depth -= 1
                            if depth == 0:
                                break
                        open_ -= 1
                    if toks[open_ - 1].text == ")" and toks[open_ - 2].text == "(" and toks[open_ - 3].text == "operator":
                        name = "operator()"
                    else:
                        name = toks[open_ - 1].text
                    body_end = _match(toks, j, "{", "}")
                    params = [_parse_param(q, f"{self.name}:{toks[open_].line}")
                              for q in _split_top(toks[open_ + 1:k]) if q and [x.text for x in q] != ["void"]]
                    tps = pending or []
                    fd = FuncDef(self, name, [n for n, _ in tps], params, (j + 1, body_end),
                                 owner.name if owner else None, [kind for _, kind in tps])
                    if owner is not None:
                        owner.methods[name] = fd
                    else:
                        self.functions.setdefault(name, []).append(fd)
                        if tps:
                            self.templates.add(name)
                    pending = None
                    i = body_end + 1
                    continue
            # constants and fields: [static] constexpr TYPE NAME = EXPR ;   /   TYPE NAME ;
            if "constexpr" in texts and "=" in texts:
                eq = texts.index("=")
                cname = texts[eq - 1]
                ctype = _base_type([x for x in texts[:eq - 1]])
                if owner is not None:
                    owner.constants[cname] = stmt[eq + 1:]
                else:
                    self.constants.append((cname, ctype, stmt[eq + 1:]))
            elif owner is not None and texts and "(" not in texts and "=" not in texts and len(texts) >= 2:
                owner.fields.append((texts[-1], _base_type(texts[:-1])))
            if j < end and toks[j].text == "{":  # something else with a body (an initializer): skip it
                j = _match(toks, j, "{", "}")
            pending = None
            i = j + 1

    # ---------------------------------------------------------------------------- lookups
    def function(self, name: str) -> FuncDef:
        """The one definition of ``name`` (raises :class:`CSourceError` if absent or overloaded)."""
        defs = self.functions.get(name, [])
        if len(defs) != 1:
            raise CSourceError(f"{self.name}: {len(defs)} definitions of {name} (the models need exactly one)")
        return defs[0]

    def struct(self, name: str) -> StructDef:
        if name not in self.structs:
            raise CSourceError(f"{self.name}: no struct {name}")
        return self.structs[name]


# ============================================================================ expressions
_BINARY = {"*": 13, "/": 13, "%": 13, "+": 12, "-": 12, "<<": 11, ">>": 11, "<": 10, "<=": 10, ">": 10, ">=": 10,
           "==": 9, "!=": 9, "&": 8, "^": 7, "|": 6, "&&": 5, "||": 4}
_ASSIGN = {"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="}
_CAST_WORDS = {"int", "unsigned", "signed", "long", "short", "char", "float", "double", "bool", "u32", "u64"}
_MEMBERS = {"x": 0, "y": 1, "z": 2, "w": 3}


def _number(text: str):
    t = text.rstrip("uUlL")
    if t.lower().startswith("0x"):
        return int(t, 16)
    if any(c in t for c in ".eE") or text[-1] in "fF":
        return float(t.rstrip("fF"))
    if len(t) > 1 and t.startswith("0"):
        raise CSourceError(f"octal literal {text} refused")
    return int(t)


class Parser:
    """Recursive-descent parser of statements and expressions over a token slice (ASTs as tuples)."""

    def __init__(self, program: Program, toks: list[Tok], type_names: set[str], where: str):
        self.p, self.toks, self.i = program, toks, 0
        self.type_names = set(type_names)
        self.where = where

    # ----------------------------------------------------------------------------- helpers
    def err(self, msg: str):
        t = self.toks[min(self.i, len(self.toks) - 1)] if self.toks else Tok("op", "", 0)
        around = " ".join(x.text for x in self.toks[max(0, self.i - 6):self.i + 6])
        raise CSourceError(f"{self.where} (line {t.line}): {msg} near `{around}`")

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.toks[j].text if j < len(self.toks) else ""

    def kind(self, k: int = 0) -> str:
        j = self.i + k
        return self.toks[j].kind if j < len(self.toks) else ""

    def take(self, text: str | None = None) -> Tok:
        if self.i >= len(self.toks):
            self.err(f"expected {text!r}, got the end")
        t = self.toks[self.i]
        if text is not None and t.text != text:
            self.err(f"expected {text!r}, got {t.text!r}")
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        if self.peek() == text:
            self.i += 1
            return True
        return False

    # --------------------------------------------------------------------------- expressions
    def expr(self, min_prec: int = 0, no_gt: bool = False):
        left = self.unary(no_gt)
        while True:
            op = self.peek()
            if op == "?" and min_prec <= 3:
                self.take()
                a = self.expr(0, no_gt)
                self.take(":")
                b = self.expr(3, no_gt)
                left = ("cond", left, a, b)
                continue
            prec = _BINARY.get(op) if self.kind() == "op" else None
            if prec is None or prec < min_prec or (no_gt and op in (">", ">>")):
                return left
            self.take()
            left = ("bin", op, left, self.expr(prec + 1, no_gt))

    def _is_cast(self) -> bool:
        if self.peek() != "(":
            return False
        j = self.i + 1
        words = []
        while j < len(self.toks) and self.toks[j].kind == "id" and self.toks[j].text in _CAST_WORDS:
            words.append(self.toks[j].text)
            j += 1
        return bool(words) and j < len(self.toks) and self.toks[j].text == ")"

    def unary(self, no_gt: bool = False):
        t = self.peek()
        if self.kind() == "op":
            if t == "-":
                self.take()
                return ("neg", self.unary(no_gt))
            if t == "+":
                self.take()
                return self.unary(no_gt)
            if t == "!":
                self.take()
                return ("not", self.unary(no_gt))
            if t == "~":
                self.take()
                return ("inv", self.unary(no_gt))
            if t == "*":
                self.take()
                return ("deref", self.unary(no_gt))
            if t == "&":
                self.err("address-of is not modelled")
            if t in ("++", "--"):
                self.err("increment inside an expression is not modelled")
            if self._is_cast():
                self.take("(")
                words = []
                while self.peek() != ")":
                    words.append(self.take().text)
                self.take(")")
                return ("cast", " ".join(words), self.unary(no_gt))
        if t == "sizeof":
            self.take()
            self.take("(")
            spec = self.typespec(")")
            self.take(")")
            return ("sizeof", spec)
        return self.postfix(self.primary(), no_gt)

    def typespec(self, *stops: str):
        """``const uint4*`` -> ("type", "uint4", 1); a single non-type name -> ("name", ...)."""
        words, ptr = [], 0
        while self.peek() not in stops:
            w = self.take().text
            if w == "*":
                ptr += 1
            elif w == "&":
                self.err("reference types are not modelled here")
            elif w not in QUALIFIERS:
                words.append(w)
        if not words:
            self.err("empty type")
        return ("type", " ".join(words), ptr)

    def template_args(self) -> list:
        self.take("<")
        args = []
        while True:
            j, depth, words = self.i, 0, []
            while j < len(self.toks):
                x = self.toks[j].text
                if x in ("(", "["):
                    depth += 1
                elif x in (")", "]"):
                    depth -= 1
                elif depth == 0 and x in (",", ">"):
                    break
                words.append(self.toks[j])
                j += 1
            is_type = all(w.text in TYPE_WORDS or w.text in QUALIFIERS or w.text == "*" for w in words) and (
                len(words) > 1 or (words and words[0].text in TYPE_WORDS))
            args.append(self.typespec(",", ">") if is_type else self.expr(0, no_gt=True))
            if self.accept(","):
                continue
            self.take(">")
            return args

    def primary(self):
        t = self.take()
        if t.kind == "num":
            return ("num", _number(t.text))
        if t.kind == "op" and t.text == "(":
            e = self.expr()
            self.take(")")
            return e
        if t.kind != "id":
            self.i -= 1
            self.err(f"unexpected {t.text!r}")
        if t.text == "nullptr":
            return ("null",)
        if t.text in ("true", "false"):
            return ("num", t.text == "true")
        if t.text in ("reinterpret_cast", "static_cast"):
            self.take("<")
            spec = self.typespec(">")
            self.take(">")
            self.take("(")
            e = self.expr()
            self.take(")")
            if t.text == "reinterpret_cast":
                if spec[2] != 1:
                    self.err("reinterpret_cast to a non-pointer type is not modelled")
                return ("reinterpret", spec, e)
            if spec[2] or spec[1] not in CONVERSIONS:
                self.err(f"static_cast<{spec[1]}> is not modelled")
            return ("cast", spec[1], e)
        if t.text in ("asm", "this", "new", "delete", "operator"):
            self.i -= 1
            self.err(f"{t.text} is not modelled")
        node = ("name", t.text)
        if self.peek() == "<" and t.text in self.p.templates | INTRINSIC_TEMPLATES:
            node = ("spec", t.text, self.template_args())
        while self.peek() == "::":
            self.take()
            m = self.take()
            if m.kind != "id":
                self.err("expected a name after ::")
            node = ("name", m.text) if node == ("name", "tt") else ("scope", node, m.text)
            if self.peek() == "<" and m.text in self.p.templates | INTRINSIC_TEMPLATES:
                node = ("spec", m.text, self.template_args()) if node[0] == "name" else self.err("qualified template")
        if self.peek() == "{" and node[0] == "name" and node[1] in self.p.structs:
            self.take("{")
            args = []
            while not self.accept("}"):
                args.append(self.expr())
                self.accept(",")
            return ("init", node[1], args)
        return node

    def postfix(self, node, no_gt: bool = False):
        while True:
            t = self.peek()
            if t == "[":
                self.take()
                idx = self.expr()
                self.take("]")
                node = ("index", node, idx)
            elif t == "(":
                self.take()
                args = []
                while not self.accept(")"):
                    args.append(self.expr())
                    if self.peek() != ")":
                        self.take(",")
                node = ("call", node, args)
            elif t == ".":
                self.take()
                m = self.take().text
                if m not in _MEMBERS:
                    self.err(f"member .{m} is not modelled (only .x .y .z .w)")
                node = ("member", node, m)
            elif t in ("->", "++", "--"):
                self.err(f"{t} is not modelled")
            else:
                return node

    # ---------------------------------------------------------------------------- statements
    def block(self) -> list:
        """Statements up to the end of the token slice."""
        out = []
        while self.i < len(self.toks):
            s = self.stmt()
            if s is not None:
                out.append(s)
        return out

    def stmt(self):
        while self.i < len(self.toks) and self.toks[self.i].kind == "pp":  # `#pragma unroll` binds to what follows
            if not re.fullmatch(r"\s*#\s*pragma\s+unroll(\s+\d+)?\s*", self.toks[self.i].text):
                self.err("preprocessor directive inside a function is not modelled")
            self.i += 1
        if self.i >= len(self.toks):
            return None
        t = self.toks[self.i]
        line = t.line
        if t.text == "{":
            j = _match(self.toks, self.i, "{", "}")
            inner = Parser(self.p, self.toks[self.i + 1:j], self.type_names, self.where)
            self.i = j + 1
            return ("block", inner.block(), line)
        if t.text == ";":
            self.i += 1
            return None
        if t.text == "for":
            start = self.i
            self.take()
            self.take("(")
            init = None if self.peek() == ";" else self.simple(";")
            self.take(";")
            cond = None if self.peek() == ";" else self.expr()
            self.take(";")
            step = None if self.peek() == ")" else self.simple(")")
            self.take(")")
            text = " ".join(x.text for x in self.toks[start:self.i])
            body = self.stmt()
            return ("for", init, cond, step, body, line, text)
        if t.text == "if":
            start = self.i
            self.take()
            self.accept("constexpr")
            self.take("(")
            cond = self.expr()
            self.take(")")
            text = " ".join(x.text for x in self.toks[start:self.i])
            then = self.stmt()
            other = self.stmt() if self.accept("else") else None
            return ("if", cond, then, other, line, text)
        if t.text == "return":
            self.take()
            e = None if self.peek() == ";" else self.expr()
            self.take(";")
            return ("return", e, line, "return " + ("" if e is None else "..."))
        if t.text in ("break", "continue"):
            self.take()
            self.take(";")
            return (t.text, line)
        if t.text == "typedef":
            self.take()
            tmpl = self.primary()
            alias = self.take().text
            self.take(";")
            self.type_names.discard(alias)
            return ("typedef", alias, tmpl, line)
        if t.text == "static_assert":
            self.i = _match(self.toks, self.i + 1, "(", ")") + 1
            self.take(";")
            return None
        if t.text in ("while", "do", "switch", "goto", "asm", "case", "default", "try", "throw"):
            self.err(f"`{t.text}` is not modelled")
        s = self.simple(";")
        self.take(";")
        return s

    def _is_decl(self) -> bool:
        t = self.peek()
        if self.kind() != "id":
            return False
        if t in QUALIFIERS:
            return True
        if t in TYPE_WORDS or t in self.type_names:
            return self.peek(1) not in ("::", "(")
        return False

    def simple(self, stop: str):
        start = self.i
        line = self.toks[self.i].line
        if self._is_decl():
            words = []
            while self.kind() == "id" and (self.peek() in TYPE_WORDS or self.peek() in QUALIFIERS
                                             or self.peek() in self.type_names) and self.peek(1) not in ("=", "[", ",", ";", ")"):
                words.append(self.take().text)
            decls = []
            while True:
                ptr = ref = False
                while self.peek() in ("*", "&", "const", "__restrict__"):
                    w = self.take().text
                    ptr |= w == "*"
                    ref |= w == "&"
                name = self.take()
                if name.kind != "id":
                    self.err("expected a declared name")
                dims = []
                while self.accept("["):
                    dims.append(None if self.peek() == "]" else self.expr())
                    self.take("]")
                init = None
                if self.accept("="):
                    if self.peek() == "[":
                        init = self.lambda_()
                    elif self.peek() == "{":
                        self.err("brace initializers are not modelled")
                    else:
                        init = self.expr()
                decls.append((name.text, ptr, ref, dims, init))
                if not self.accept(","):
                    break
            text = " ".join(x.text for x in self.toks[start:self.i])
            return ("decl", words, decls, line, text)
        if self.peek() in ("++", "--"):
            op = self.take().text
            target = self.unary()
            text = " ".join(x.text for x in self.toks[start:self.i])
            return ("assign", target, "+=" if op == "++" else "-=", ("num", 1), line, text)
        target = self.expr()
        if self.peek() in _ASSIGN:
            op = self.take().text
            value = self.expr()
            text = " ".join(x.text for x in self.toks[start:self.i])
            return ("assign", target, op, value, line, text)
        if self.peek() in ("++", "--"):
            op = self.take().text
            text = " ".join(x.text for x in self.toks[start:self.i])
            return ("assign", target, "+=" if op == "++" else "-=", ("num", 1), line, text)
        if target[0] != "call":
            self.err("an expression statement without effect")
        text = " ".join(x.text for x in self.toks[start:self.i])
        return ("call", target, line, text)

    def lambda_(self):
        self.take("[")
        if self.take().text != "&" or self.take().text != "]":
            self.err("only [&] lambdas are modelled")
        self.take("(")
        j = _match(self.toks, self.i - 1, "(", ")")
        params = [_parse_param(p, self.where) for p in _split_top(self.toks[self.i:j]) if p]
        self.i = j + 1
        if self.peek() != "{":
            self.err("lambda body expected")
        k = _match(self.toks, self.i, "{", "}")
        body = Parser(self.p, self.toks[self.i + 1:k], self.type_names, self.where).block()
        self.i = k + 1
        return ("lambda", params, body)


# ================================================================================ codegen
#: Intrinsic templates the runtime provides (``cp_async_wait<N>()``).
INTRINSIC_TEMPLATES = {"cp_async_wait"}
#: Calls that are warp / block collectives: they become ``yield`` points of the thread generators.
COLLECTIVES = {"mma", "ldmatrix_x4", "__syncthreads"}
_BUILTIN_DIMS = {"threadIdx", "blockIdx", "blockDim", "gridDim"}


def _pyname(c: str) -> str:
    return c + "_" if keyword.iskeyword(c) or c in ("min", "max", "bool", "int", "float") else c


class _Scope:
    def __init__(self, parent=None):
        self.parent, self.names = parent, {}

    def find(self, c: str):
        s = self
        while s is not None:
            if c in s.names:
                return s.names[c]
            s = s.parent
        return None


class Transpiler:
    """Python source for the C++ functions of a :class:`Program`.

    Args:
        program: the parsed source. runtime_names: the names the runtime binds (intrinsics, traits
            templates); a call to any other non-program function is refused.
    """

    def __init__(self, program: Program, runtime_names: set[str]):
        self.p = program
        self.runtime_names = set(runtime_names)
        self.lines: list[str] = []  # the function being generated
        self.cmap: list[str] = []
        self.done_lines: list[str] = []  # finished functions (what is compiled)
        self.done_cmap: list[str] = []  # the C statement of each of their lines
        self.counter = 0
        self.sid = 0
        self.generated: dict[str, str] = {}  # C function key -> Python function name
        self.kernel_level: set[str] = set()

    # --------------------------------------------------------------------------- emitting
    def emit(self, depth: int, text: str, c: str) -> None:
        self.lines.append("    " * depth + text)
        self.cmap.append(c)

    def fresh(self, c: str) -> str:
        self.counter += 1
        return f"{_pyname(c)}_{self.counter}"

    # -------------------------------------------------------------------------- functions
    def pyfunc(self, fd: FuncDef) -> str:
        key = (fd.owner or "") + "::" + fd.name
        if key not in self.generated:
            self.generated[key] = "_f_" + re.sub(r"\W", "_", key.strip(":")) + f"_{len(self.generated)}"
            self.gen_function(fd, self.generated[key])
        return self.generated[key]

    def gen_function(self, fd: FuncDef, pyname: str) -> None:
        saved = self.lines, self.cmap, getattr(self, "_has_yield", False)
        self.lines, self.cmap = [], []
        try:
            self._gen_function(fd, pyname)
            lines, cmap = self.lines, self.cmap
        finally:
            self.lines, self.cmap, self._has_yield = saved
        self.done_lines.extend(lines)
        self.done_cmap.extend(cmap)

    def _gen_function(self, fd: FuncDef, pyname: str) -> None:
        where = f"{self.p.name}:{fd.owner + '::' if fd.owner else ''}{fd.name}"
        type_names = {n for n, k in zip(fd.tparams, fd.tparam_kinds) if k == "typename"}
        toks = self.p.toks[fd.body[0]:fd.body[1]]
        body = Parser(self.p, toks, type_names, where).block()
        scope = _Scope()
        args = ["_tt_th"]
        fields = self.p.struct(fd.owner).fields if fd.owner else []
        for c, _ in fields:
            scope.names[c] = (self.fresh(c), None)
            args.append(scope.names[c][0])
        for c in fd.tparams:
            scope.names[c] = (self.fresh(c), None)
            args.append(scope.names[c][0])
        for prm in fd.params:
            conv = None if (prm.pointer or prm.array_ref) else CONVERSIONS.get(prm.base)
            scope.names[prm.name] = (self.fresh(prm.name), conv)
            args.append(scope.names[prm.name][0])
        self.emit(0, f"def {pyname}({', '.join(args)}):", f"{where}(...)")
        for prm in fd.params:
            py, conv = scope.names[prm.name]
            if conv:
                self.emit(1, f"{py} = {conv}({py})", f"{where}: parameter {prm.name}")
        self._has_yield = False
        self.gen_block(body, scope, 1, where)
        if self._has_yield:
            self.kernel_level.add(pyname)
        self.emit(1, "return None", f"{where}: end")

    # -------------------------------------------------------------------------- statements
    def gen_block(self, stmts: list, scope: _Scope, depth: int, where: str) -> None:
        n0 = len(self.lines)
        for s in stmts:
            self.gen_stmt(s, scope, depth, where)
        if len(self.lines) == n0:
            self.emit(depth, "pass", where)

    def gen_stmt(self, s, scope: _Scope, depth: int, where: str) -> None:
        kind = s[0]
        if kind == "block":
            self.gen_block(s[1], _Scope(scope), depth, where)
        elif kind == "decl":
            self.gen_decl(s, scope, depth, where)
        elif kind == "assign":
            _, target, op, value, line, text = s
            self.emit(depth, self.gen_assign(target, op, value, scope, f"{where}:{line}"), f"{where}:{line}: {text}")
        elif kind == "call":
            _, call, line, text = s
            c = f"{where}:{line}: {text}"
            callee = call[1]
            cname = callee[1] if callee[0] == "name" else (callee[2] if callee[0] == "scope" else None)
            if cname in COLLECTIVES:
                self.sid += 1
                self._has_yield = True
                args = ", ".join(self.gen_expr(a, scope, c) for a in call[2])
                self.emit(depth, f"yield ({self.sid}, {self.gen_expr(callee, scope, c)}, ({args}{',' if call[2] else ''}))", c)
            else:
                code = self.gen_call(call, scope, c, statement=True)
                if code.startswith("yield from "):
                    self._has_yield = True
                self.emit(depth, code, c)
        elif kind == "if":
            _, cond, then, other, line, text = s
            c = f"{where}:{line}: {text}"
            self.emit(depth, f"if {self.gen_expr(cond, scope, c)}:", c)
            self.gen_branch(then, scope, depth + 1, where)
            if other is not None:
                self.emit(depth, "else:", c)
                self.gen_branch(other, scope, depth + 1, where)
        elif kind == "for":
            self.gen_for(s, scope, depth, where)
        elif kind == "return":
            _, e, line, text = s
            c = f"{where}:{line}: {text}"
            self.emit(depth, "return None" if e is None else f"return {self.gen_expr(e, scope, c)}", c)
        elif kind in ("break", "continue"):
            self.emit(depth, kind, f"{where}:{s[1]}: {kind}")
        elif kind == "typedef":
            _, alias, tmpl, line = s
            c = f"{where}:{line}: typedef {alias}"
            py = self.fresh(alias)
            val = self.gen_expr(tmpl, scope, c)
            scope.names[alias] = (py, None)
            self.emit(depth, f"{py} = {val}", c)
        else:  # pragma: no cover - parser produces only the kinds above
            raise CSourceError(f"{where}: statement {kind} not modelled")

    def gen_branch(self, s, scope: _Scope, depth: int, where: str) -> None:
        if s is None:
            self.emit(depth, "pass", where)
        elif s[0] == "block":
            self.gen_block(s[1], _Scope(scope), depth, where)
        else:
            n0 = len(self.lines)
            self.gen_stmt(s, _Scope(scope), depth, where)
            if len(self.lines) == n0:
                self.emit(depth, "pass", where)

    def gen_for(self, s, scope: _Scope, depth: int, where: str) -> None:
        _, init, cond, step, body, line, text = s
        c = f"{where}:{line}: {text}"
        inner = _Scope(scope)
        if init is not None:
            self.gen_stmt(init, inner, depth, where)
        cond_py = "True" if cond is None else self.gen_expr(cond, inner, c)
        uses_continue = self._has_continue(body)
        if uses_continue:
            flag = self.fresh("first")
            self.emit(depth, f"{flag} = True", c)
            self.emit(depth, "while True:", c)
            self.emit(depth + 1, "_tt_th.tick()", c)
            self.emit(depth + 1, f"if not {flag}:", c)
            if step is not None:
                self.gen_stmt(step, inner, depth + 2, where)
            else:
                self.emit(depth + 2, "pass", c)
            self.emit(depth + 1, f"{flag} = False", c)
            self.emit(depth + 1, f"if not ({cond_py}):", c)
            self.emit(depth + 2, "break", c)
            self.gen_branch(body, inner, depth + 1, where)
        else:
            self.emit(depth, f"while {cond_py}:", c)
            self.emit(depth + 1, "_tt_th.tick()", c)
            self.gen_branch(body, inner, depth + 1, where)
            if step is not None:
                self.gen_stmt(step, inner, depth + 1, where)

    def _has_continue(self, s) -> bool:
        if s is None:
            return False
        if s[0] == "continue":
            return True
        if s[0] == "block":
            return any(self._has_continue(x) for x in s[1])
        if s[0] == "if":
            return self._has_continue(s[2]) or self._has_continue(s[3])
        return False  # a nested loop owns its continues

    def gen_decl(self, s, scope: _Scope, depth: int, where: str) -> None:
        _, words, decls, line, text = s
        c = f"{where}:{line}: {text}"
        shared = "__shared__" in words
        extern = "extern" in words
        base = _base_type(words)
        for name, ptr, ref, dims, init in decls:
            is_ptr = ptr or "*" in words
            conv = None if (is_ptr or ref) else CONVERSIONS.get(base)
            if conv is None and not (is_ptr or ref) and base not in OPAQUE_TYPES and base not in scope_types(scope, base):
                raise CSourceError(f"{c}: type {base!r} not modelled")
            py = self.fresh(name)
            if init is not None and init[0] == "lambda":
                scope.names[name] = (py, None)
                self.gen_lambda(py, init, scope, depth, where, c)
                continue
            if dims:
                if init is not None:
                    raise CSourceError(f"{c}: initialized arrays are not modelled")
                ctype = self.gen_type(("type", base, 0), scope, c) if (shared and extern) else None
                if extern:
                    if not shared or dims != [None]:
                        raise CSourceError(f"{c}: only `extern __shared__ T name[]` is modelled")
                    val = f"_tt_th.block.dynamic({ctype})"
                else:
                    if any(d is None for d in dims):
                        raise CSourceError(f"{c}: array without a size")
                    dims_py = ", ".join(self.gen_expr(d, scope, c) for d in dims)
                    conv_py = conv or "None"
                    val = (f"_tt_th.block.shared({name!r}, {conv_py}, ({dims_py},))" if shared
                           else f"_tt_array({conv_py}, ({dims_py},))")
            elif init is None:
                if shared:
                    raise CSourceError(f"{c}: scalar __shared__ variables are not modelled")
                val = "_tt_UNDEF"
            else:
                val = self.gen_expr(init, scope, c)
                if conv:
                    val = f"{conv}({val})"
            self.emit(depth, f"{py} = {val}", c)
            scope.names[name] = (py, None if dims else conv)

    def gen_lambda(self, py: str, init, scope: _Scope, depth: int, where: str, c: str) -> None:
        _, params, body = init
        inner = _Scope(scope)
        args = []
        for prm in params:
            conv = None if (prm.pointer or prm.array_ref) else CONVERSIONS.get(prm.base)
            inner.names[prm.name] = (self.fresh(prm.name), conv)
            args.append(inner.names[prm.name][0])
        self.emit(depth, f"def {py}({', '.join(args)}):", c)
        for prm in params:
            p_py, conv = inner.names[prm.name]
            if conv:
                self.emit(depth + 1, f"{p_py} = {conv}({p_py})", c)
        had = self._has_yield
        self._has_yield = False
        self.gen_block(body, inner, depth + 1, where)
        if self._has_yield:
            raise CSourceError(f"{c}: collectives inside a lambda are not modelled")
        self._has_yield = had

    def gen_assign(self, target, op: str, value, scope: _Scope, c: str) -> str:
        val = self.gen_expr(value, scope, c)
        if target[0] == "name":
            found = scope.find(target[1])
            if found is None:
                raise CSourceError(f"{c}: assignment to {target[1]}, which is not a local")
            py, conv = found
            rhs = val if op == "=" else self._binop(op[:-1], py, val)
            return f"{py} = {conv}({rhs})" if conv else f"{py} = {rhs}"
        if target[0] == "index":
            base = self.gen_expr(target[1], scope, c)
            idx = self.gen_expr(target[2], scope, c)
            rhs = val if op == "=" else self._binop(op[:-1], f"{base}[{idx}]", val)
            return f"{base}[{idx}] = {rhs}"
        if target[0] == "deref":
            ptr = self.gen_expr(target[1], scope, c)
            rhs = val if op == "=" else self._binop(op[:-1], f"{ptr}[0]", val)
            return f"{ptr}[0] = {rhs}"
        raise CSourceError(f"{c}: assignment target not modelled")

    # ------------------------------------------------------------------------- expressions
    @staticmethod
    def _binop(op: str, a: str, b: str) -> str:
        if op == "/":
            return f"_tt_div({a}, {b})"
        if op == "%":
            return f"_tt_mod({a}, {b})"
        if op == "&&":
            return f"(bool({a}) and bool({b}))"
        if op == "||":
            return f"(bool({a}) or bool({b}))"
        return f"({a} {op} {b})"

    def gen_type(self, spec, scope: _Scope, c: str) -> str:
        if spec[0] == "name":
            spec = ("type", spec[1], 0)
        _, base, _ptr = spec
        found = scope.find(base)
        if found is not None:
            return found[0]
        return f"_tt_ctype({base!r})"

    def gen_call(self, call, scope: _Scope, c: str, statement: bool = False) -> str:
        _, callee, args = call
        args_py = [self.gen_expr(a, scope, c) for a in args]
        if (callee[0] in ("name", "spec") and scope.find(callee[1]) is None and callee[1] in self.p.functions
                and callee[1] not in self.runtime_names):
            fd = self.p.function(callee[1])
            targs = []
            if callee[0] == "spec":
                targs = [self.gen_type(a, scope, c) if a[0] == "type" else self.gen_expr(a, scope, c) for a in callee[2]]
            if len(targs) != len(fd.tparams):
                raise CSourceError(f"{c}: {callee[1]} needs {len(fd.tparams)} template arguments, got {len(targs)}")
            if len(args) != len(fd.params):
                raise CSourceError(f"{c}: {callee[1]} takes {len(fd.params)} arguments, got {len(args)}")
            f = self.pyfunc(fd)
            code = f"{f}(_tt_th, {', '.join(targs + args_py)})"
            if f in self.kernel_level:
                if not statement:
                    raise CSourceError(f"{c}: {callee[1]} contains collectives and is used in an expression")
                return "yield from " + code
            return code
        if callee[0] == "name" and scope.find(callee[1]) is None and callee[1] not in self.runtime_names:
            raise CSourceError(f"{c}: call of {callee[1]}, which is neither in the source nor a modelled intrinsic")
        return f"{self.gen_expr(callee, scope, c)}({', '.join(args_py)})"

    def gen_expr(self, e, scope: _Scope, c: str) -> str:
        k = e[0]
        if k == "num":
            return repr(e[1])
        if k == "null":
            return "None"
        if k == "name":
            n = e[1]
            if n in _BUILTIN_DIMS:
                return f"_tt_th.{n}"
            found = scope.find(n)
            if found is not None:
                return found[0]
            consts = {name for name, _, _ in self.p.constants}
            if n in consts or n in self.runtime_names:
                return _pyname(n)
            raise CSourceError(f"{c}: {n} is not declared (and not a modelled intrinsic)")
        if k == "member":
            return f"{self.gen_expr(e[1], scope, c)}[{_MEMBERS[e[2]]}]"
        if k == "scope":
            base = self.gen_expr(e[1], scope, c)
            return f"{base}.{e[2]}"
        if k == "spec":
            if e[1] in self.p.functions and scope.find(e[1]) is None and e[1] not in self.runtime_names:
                raise CSourceError(f"{c}: template function {e[1]} used without a call")
            if e[1] not in self.runtime_names:
                raise CSourceError(f"{c}: template {e[1]} is not modelled")
            targs = [self.gen_type(a, scope, c) if a[0] == "type" else self.gen_expr(a, scope, c) for a in e[2]]
            return f"_tt_spec({_pyname(e[1])}, ({', '.join(targs)}{',' if targs else ''}))"
        if k == "call":
            return self.gen_call(e, scope, c)
        if k == "index":
            return f"{self.gen_expr(e[1], scope, c)}[{self.gen_expr(e[2], scope, c)}]"
        if k == "cast":
            conv = CONVERSIONS.get(e[1])
            if conv is None:
                raise CSourceError(f"{c}: cast to {e[1]} not modelled")
            return f"{conv}({self.gen_expr(e[2], scope, c)})"
        if k == "reinterpret":
            return f"_tt_reinterpret({self.gen_type(e[1], scope, c)}, {self.gen_expr(e[2], scope, c)})"
        if k == "sizeof":
            return f"_tt_sizeof({self.gen_type(e[1], scope, c)})"
        if k == "deref":
            return f"{self.gen_expr(e[1], scope, c)}[0]"
        if k == "neg":
            return f"(-{self.gen_expr(e[1], scope, c)})"
        if k == "not":
            return f"(not {self.gen_expr(e[1], scope, c)})"
        if k == "inv":
            return f"(~{self.gen_expr(e[1], scope, c)})"
        if k == "bin":
            return self._binop(e[1], self.gen_expr(e[2], scope, c), self.gen_expr(e[3], scope, c))
        if k == "cond":
            a, b, cc = (self.gen_expr(x, scope, c) for x in (e[2], e[3], e[1]))
            return f"({a} if {cc} else {b})"
        if k == "init":
            if e[1] not in self.runtime_names:
                raise CSourceError(f"{c}: struct {e[1]} is not modelled")
            return f"{_pyname(e[1])}({', '.join(self.gen_expr(a, scope, c) for a in e[2])})"
        raise CSourceError(f"{c}: expression {k} not modelled")


def scope_types(scope: _Scope, base: str) -> set[str]:
    """Template type parameters visible in ``scope`` (their values are CTypes at run time)."""
    return {base} if scope.find(base) is not None else set()


# ================================================================================ runtime
class _Undef:
    """The value of a declared but unset register / array slot: any use is a model error."""

    __slots__ = ()

    def _fail(self, *a):
        raise ModelError("use of an unset value (a register or array slot the kernel never wrote)")

    __bool__ = __int__ = __index__ = __float__ = __hash__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __and__ = __rand__ = _fail
    __or__ = __ror__ = __xor__ = __rxor__ = __lshift__ = __rlshift__ = __rshift__ = __rrshift__ = _fail
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = __neg__ = __invert__ = __getitem__ = _fail
    __truediv__ = __rtruediv__ = __floordiv__ = __mod__ = _fail

    def __repr__(self):
        return "UNDEF"


UNDEF = _Undef()
_M32 = 0xFFFFFFFF


def _check_int(v):
    if v is UNDEF:
        UNDEF._fail()
    return v


def _tt_int(v):
    if isinstance(v, float):
        return int(v)
    v = int(_check_int(v))
    return ((v + 0x80000000) & _M32) - 0x80000000


def _tt_u32(v):
    if isinstance(v, float):
        raise ModelError(f"float {v} converted to u32")
    return int(_check_int(v)) & _M32


def _tt_u64(v):
    return int(_check_int(v)) & 0xFFFFFFFFFFFFFFFF


def _tt_i64(v):
    return int(v) if isinstance(v, float) else int(_check_int(v))


def _tt_u16(v):
    return int(_check_int(v)) & 0xFFFF


def _tt_u8(v):
    return int(_check_int(v)) & 0xFF


def _tt_i8(v):
    return ((int(_check_int(v)) + 0x80) & 0xFF) - 0x80


def _tt_bool(v):
    return bool(_check_int(v))


def _tt_float(v):
    if v is UNDEF:
        UNDEF._fail()
    return float(v)


def _tt_div(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    a, b = int(a), int(b)
    if b == 0:
        raise ModelError("integer division by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _tt_mod(a, b):
    return a - b * _tt_div(a, b)


class CArray:
    """A fixed-size C array (registers, local or shared memory): bounds-checked, UNDEF until set,
    values converted to the element type on store."""

    __slots__ = ("data", "conv")

    def __init__(self, conv, dims: tuple, fill=UNDEF):
        self.conv = conv
        n = int(dims[0])
        if n <= 0:
            raise ModelError(f"array of size {n}")
        if len(dims) > 1:
            self.data = [CArray(conv, dims[1:], fill) for _ in range(n)]
        else:
            self.data = [fill] * n

    def _bad(self, i):
        return ModelError(f"array index {i!r} out of bounds [0, {len(self.data)})")

    def __getitem__(self, i):
        if i < 0:
            raise self._bad(i)
        try:
            return self.data[i]
        except (IndexError, TypeError):
            raise self._bad(i) from None

    def __setitem__(self, i, v):
        if i < 0:
            raise self._bad(i)
        try:
            self.data[i] = self.conv(v) if self.conv is not None and v is not UNDEF else v
        except (IndexError, TypeError):
            raise self._bad(i) from None

    def __len__(self):
        return len(self.data)

    def tolist(self):
        return [x.tolist() if isinstance(x, CArray) else x for x in self.data]


def _tt_array(conv, dims):
    return CArray(None if conv is None else conv, dims)


# ------------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class CType:
    """A C type in memory: ``fmt`` is its ``struct`` format (little endian), ``kind`` a half
    format tag for 16-bit float types (values are their bit patterns)."""

    name: str
    size: int
    fmt: str
    kind: str | None = None

    @property
    def align(self) -> int:
        return self.size

    def decode(self, raw: bytes):
        v = struct.unpack(self.fmt, raw)
        return v if len(v) > 1 else v[0]

    def encode(self, v) -> bytes:
        try:
            if isinstance(v, tuple):
                return struct.pack(self.fmt, *v)
            if self.fmt[-1] in "fd":
                return struct.pack(self.fmt, float(v))
            return struct.pack(self.fmt, int(_check_int(v)))
        except (struct.error, TypeError, OverflowError) as exc:
            raise ModelError(f"cannot store {v!r} as {self.name}: {exc}") from None


CTYPES = {
    "u32": CType("u32", 4, "<I"), "unsigned int": CType("u32", 4, "<I"), "unsigned": CType("u32", 4, "<I"),
    "int": CType("int", 4, "<i"), "float": CType("float", 4, "<f"), "long long": CType("long long", 8, "<q"),
    "signed char": CType("signed char", 1, "<b"), "char": CType("signed char", 1, "<b"),
    "unsigned char": CType("unsigned char", 1, "<B"), "unsigned short": CType("unsigned short", 2, "<H"),
    "uint4": CType("uint4", 16, "<4I"), "uint2": CType("uint2", 8, "<2I"), "float4": CType("float4", 16, "<4f"),
    "void": CType("void", 1, "<B"),
}
HALF_TYPES = {"bf16": CType("__nv_bfloat16", 2, "<H", "bf16"), "f16": CType("__half", 2, "<H", "f16")}
CTYPES["__nv_bfloat16"], CTYPES["__half"] = HALF_TYPES["bf16"], HALF_TYPES["f16"]


def _tt_ctype(name: str) -> CType:
    if name not in CTYPES:
        raise CSourceError(f"memory type {name!r} not modelled")
    return CTYPES[name]


class Buffer:
    """Bytes of one allocation (global tensor, or a block's dynamic shared memory).

    Args:
        data: initial bytes. name: for messages. readonly: writes are model errors (inputs).
        track: count writes per byte (outputs: ``check_written_once``). shared: refuse reads of
            bytes never written (shared memory; needs ``track``). base: the allocation's address
            modulo 256 (alignment checks are on ``base + offset``).
    """

    def __init__(self, data, name: str, readonly: bool = False, track: bool = False, shared: bool = False,
                 base: int = 0):
        self.data = bytearray(data)
        self.name, self.readonly, self.shared, self.base = name, readonly, shared, base
        self.writes = bytearray(len(self.data)) if track else None

    def read(self, off: int, size: int) -> bytes:
        if off < 0 or off + size > len(self.data):
            raise ModelError(f"read of {size} bytes at offset {off} outside {self.name} ({len(self.data)} bytes)")
        if (self.base + off) % size and size in (2, 4, 8, 16):
            raise ModelError(f"misaligned {8 * size}-bit read at byte {off} of {self.name}")
        if self.writes is not None and self.shared and not all(self.writes[off:off + size]):
            raise ModelError(f"read of {self.name} bytes {off}..{off + size - 1} before any write")
        return bytes(self.data[off:off + size])

    def write(self, off: int, raw: bytes) -> None:
        size = len(raw)
        if self.readonly:
            raise ModelError(f"write into the input {self.name}")
        if off < 0 or off + size > len(self.data):
            raise ModelError(f"write of {size} bytes at offset {off} outside {self.name} ({len(self.data)} bytes)")
        if (self.base + off) % size and size in (2, 4, 8, 16):
            raise ModelError(f"misaligned {8 * size}-bit write at byte {off} of {self.name}")
        self.data[off:off + size] = raw
        if self.writes is not None:
            for b in range(off, off + size):
                self.writes[b] = min(self.writes[b] + 1, 255)

    def check_written_once(self, nbytes: int | None = None) -> None:
        """Every byte (of the first ``nbytes``) written exactly once."""
        w = self.writes[: nbytes if nbytes is not None else len(self.writes)]
        bad = [i for i, c in enumerate(w) if c != 1]
        if bad:
            raise ModelError(f"{self.name}: {len(bad)} of {len(w)} bytes not written exactly once "
                             f"(first at byte {bad[0]}, written {w[bad[0]]} times)")


class Ptr:
    """A typed pointer into a :class:`Buffer`: ``+`` moves by the pointee size, ``[i]`` loads / stores."""

    __slots__ = ("buf", "off", "ct")

    def __init__(self, buf: Buffer, off: int, ct: CType):
        self.buf, self.off, self.ct = buf, off, ct

    def __add__(self, n):
        if isinstance(n, (Ptr, float)) or n is UNDEF:
            raise ModelError(f"pointer + {n!r}")
        return Ptr(self.buf, self.off + int(n) * self.ct.size, self.ct)

    __radd__ = __add__

    def __sub__(self, n):
        return self.__add__(-int(n))

    def __getitem__(self, i):
        return self.ct.decode(self.buf.read(self.off + int(_check_int(i)) * self.ct.size, self.ct.size))

    def __setitem__(self, i, v):
        self.buf.write(self.off + int(_check_int(i)) * self.ct.size, self.ct.encode(v))

    def cast(self, ct: CType) -> "Ptr":
        return Ptr(self.buf, self.off, ct)

    def __repr__(self):
        return f"Ptr({self.buf.name}+{self.off}, {self.ct.name})"


def _tt_reinterpret(ct, p):
    if not isinstance(p, Ptr):
        raise ModelError(f"reinterpret_cast of {p!r}")
    if not isinstance(ct, CType):
        raise CSourceError(f"reinterpret_cast to {ct!r}")
    return p.cast(ct)


def _tt_sizeof(ct):
    return ct.size


def _tt_spec(template, targs):
    try:
        return template.specialize(*targs)
    except AttributeError:
        raise CSourceError(f"{template!r} is not a template") from None


# ------------------------------------------------------------------------------ launching
class BlockCtx:
    """A thread block's shared memory (static ``__shared__`` arrays by name, one dynamic buffer)."""

    def __init__(self, dynamic_bytes: int):
        self.arrays: dict[str, CArray] = {}
        self.smem = Buffer(bytes(dynamic_bytes), "dynamic shared memory", track=True, shared=True)

    def shared(self, name, conv, dims):
        arr = self.arrays.get(name)
        if arr is None:
            arr = self.arrays[name] = CArray(conv, dims)
        return arr

    def dynamic(self, ct: CType) -> Ptr:
        if not self.smem.data:
            raise ModelError("extern __shared__ used without dynamic shared memory")
        return Ptr(self.smem, 0, ct)


class ThreadCtx:
    __slots__ = ("threadIdx", "blockIdx", "blockDim", "gridDim", "block", "steps", "limit")

    def __init__(self, tid, bid, bdim, gdim, block, limit):
        self.threadIdx, self.blockIdx, self.blockDim, self.gridDim = tid, bid, bdim, gdim
        self.block, self.steps, self.limit = block, 0, limit

    def tick(self):
        self.steps += 1
        if self.steps > self.limit:
            raise ModelError(f"more than {self.limit} loop iterations in one thread (runaway loop?)")


class Barrier:
    """``__syncthreads()``."""

    def __repr__(self):
        return "__syncthreads"


BARRIER = Barrier()


class Module:
    """A :class:`Program` transpiled to Python, with a runtime (intrinsics by C name).

    Args:
        program: the parsed source. runtime: C name -> Python object (intrinsics, traits
            templates, struct constructors); collectives are objects with ``collective(lanes)``.
    """

    def __init__(self, program: Program, runtime: dict):
        self.program = program
        self.runtime = dict(runtime)
        self.tr = Transpiler(program, set(self.runtime) | {"__syncthreads"})
        self.ns: dict = {}
        self._compiled_upto = 0
        self._consts_done = False

    def _namespace(self) -> dict:
        if not self._consts_done:
            ns = self.ns
            ns.update({k: v for k, v in globals().items() if k.startswith("_tt_")})
            ns["_tt_UNDEF"] = UNDEF
            ns["bool"] = bool
            for k, v in self.runtime.items():
                ns[_pyname(k)] = v
            ns["__syncthreads"] = _SyncThreads()
            for name, ctype, toks in self.program.constants:  # namespace constexprs, in order
                e = Parser(self.program, toks, set(), f"{self.program.name}: constant {name}").expr()
                conv = CONVERSIONS.get(ctype.replace("constexpr", "").strip(), None)
                val = eval(self.tr.gen_expr(e, _Scope(), f"constant {name}"), ns)
                ns[_pyname(name)] = eval(conv, ns)(val) if conv else val
            self._consts_done = True
        return self.ns

    def constant(self, name: str):
        """Value of a namespace-scope ``constexpr`` of the source."""
        ns = self._namespace()
        if name not in {n for n, _, _ in self.program.constants}:
            raise CSourceError(f"{self.program.name}: no constexpr {name}")
        return ns[_pyname(name)]

    def struct_constant(self, struct_name: str, name: str):
        """Value of ``static constexpr`` ``name`` of struct ``struct_name`` (e.g. ``Half2Traits<__half>``)."""
        toks = self.program.struct(struct_name).constants.get(name)
        if toks is None:
            raise CSourceError(f"{self.program.name}: {struct_name} has no constant {name}")
        e = Parser(self.program, toks, set(), f"{struct_name}::{name}").expr()
        return eval(self.tr.gen_expr(e, _Scope(), f"{struct_name}::{name}"), dict(self._namespace()))

    def function(self, name: str, owner: str | None = None):
        """The Python translation of C++ function ``name`` (``owner``: a struct's member function).

        Its parameters: a :class:`ThreadCtx`, the struct fields (members), the template arguments,
        then the C parameters in order.
        """
        ns = self._namespace()
        fd = self.program.struct(owner).methods.get(name) if owner else self.program.function(name)
        if fd is None:
            raise CSourceError(f"{self.program.name}: {owner} has no member {name}")
        py = self.tr.pyfunc(fd)
        if self._compiled_upto < len(self.tr.done_lines):
            src = "\n".join(self.tr.done_lines[self._compiled_upto:])
            first = self._compiled_upto
            code = compile("\n" * first + src, f"<model of {self.program.name}>", "exec")
            exec(code, ns)  # noqa: S102 - our own translation of the kernel source
            self._compiled_upto = len(self.tr.done_lines)
        return ns[py], fd, py in self.tr.kernel_level

    def c_statement(self, lineno: int) -> str:
        """The C statement a line of the generated Python came from."""
        return self.tr.done_cmap[lineno - 1] if 0 < lineno <= len(self.tr.done_cmap) else "?"

    def python_source(self) -> str:
        return "\n".join(self.tr.done_lines)

    def where(self, exc: BaseException) -> str:
        tb = exc.__traceback__
        last = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == f"<model of {self.program.name}>":
                last = tb.tb_lineno
            tb = tb.tb_next
        return self.c_statement(last) if last else "?"

    # -------------------------------------------------------------------------- launching
    def launch(self, name: str, grid, block, template_args: list, args: dict, dynamic_smem: int = 0,
               step_limit: int = 200_000) -> None:
        """Run ``name`` (a kernel-level function: its threads run in lockstep at collectives).

        Args:
            grid, block: launch shape (3-tuples). template_args: values of the template parameters,
                in order (CTypes for ``typename``). args: C parameter name -> value (``Buffer`` for a
                pointer: it becomes a pointer to the declared pointee type; None: nullptr).
            dynamic_smem: bytes of ``extern __shared__`` memory.
        """
        fn, fd, lockstep = self.function(name)
        if set(args) != {p.name for p in fd.params}:
            raise CSourceError(f"{name} takes {[p.name for p in fd.params]}, the model passes {sorted(args)}")
        if len(template_args) != len(fd.tparams):
            raise CSourceError(f"{name} has template parameters {fd.tparams}")
        tmap = dict(zip(fd.tparams, template_args))
        values = []
        for prm in fd.params:
            v = args[prm.name]
            if prm.pointer and isinstance(v, Buffer):
                ct = tmap.get(prm.base) if prm.base in tmap else _tt_ctype(prm.base)
                v = Ptr(v, 0, ct)
            values.append(v)
        gx, gy, gz = grid
        bx, by, bz = block
        nthreads = bx * by * bz
        if nthreads % 32 or nthreads > 1024:
            raise ModelError(f"block of {nthreads} threads")
        for z in range(gz):
            for y in range(gy):
                for x in range(gx):
                    blk = BlockCtx(dynamic_smem)
                    threads = []
                    for tid in range(nthreads):
                        t = (tid % bx, (tid // bx) % by, tid // (bx * by))
                        threads.append(ThreadCtx(t, (x, y, z), (bx, by, bz), (gx, gy, gz), blk, step_limit))
                    if lockstep:
                        self._run_block([fn(th, *template_args, *values) for th in threads], (x, y, z))
                    else:  # no collective in the kernel: threads run one after the other
                        for th in threads:
                            self._guard(fn, (th, *template_args, *values), f"block {(x, y, z)} thread {th.threadIdx}")

    def _guard(self, fn, args, where):
        try:
            return fn(*args)
        except (ModelError, CSourceError):
            raise
        except NameError as exc:
            raise CSourceError(f"{where}: {exc} (in `{self.where(exc)}`)") from exc
        except Exception as exc:  # any Python error of a translated statement is a model failure
            raise ModelError(f"{where}: {type(exc).__name__}: {exc} (in `{self.where(exc)}`)") from exc

    def _run_block(self, gens: list, bid) -> None:
        warps = [gens[w:w + 32] for w in range(0, len(gens), 32)]
        live = [True] * len(warps)
        while any(live):
            at_barrier = []
            for w, lanes in enumerate(warps):
                if not live[w]:
                    continue
                state = self._run_warp(lanes, bid, w)
                if state == "done":
                    live[w] = False
                else:
                    at_barrier.append((w, state))
            sids = {sid for _, sid in at_barrier}
            if at_barrier and (len(at_barrier) != sum(live) or len(sids) != 1):
                raise ModelError(f"block {bid}: __syncthreads not reached by every warp of the block")

    def _step(self, g, bid, where):
        try:
            return next(g)
        except StopIteration:
            return None
        except (ModelError, CSourceError):
            raise
        except NameError as exc:
            raise CSourceError(f"{where}: {exc} (in `{self.where(exc)}`)") from exc
        except Exception as exc:  # any Python error of a translated statement is a model failure
            raise ModelError(f"{where}: {type(exc).__name__}: {exc} (in `{self.where(exc)}`)") from exc

    def _run_warp(self, lanes: list, bid, w: int):
        """Advance a warp to its next __syncthreads (returns its statement id) or its end ("done")."""
        where = f"block {bid} warp {w}"
        ys = [self._step(g, bid, where) for g in lanes]
        while True:
            done = [y is None for y in ys]
            if all(done):
                return "done"
            if any(done):
                raise ModelError(f"{where}: some lanes exited while others reached a collective")
            sids = {y[0] for y in ys}
            if len(sids) != 1:
                raise ModelError(f"{where}: lanes diverged at collectives (statements {sorted(sids)})")
            fn = ys[0][1]
            if isinstance(fn, _SyncThreads):
                return ys[0][0]
            if not hasattr(fn, "collective"):
                raise CSourceError(f"{where}: {fn!r} is called as a collective but is not one")
            try:
                fn.collective([y[2] for y in ys])
            except (ModelError, CSourceError):
                raise
            except Exception as exc:  # a failing hardware model is a model failure
                raise ModelError(f"{where}: collective {fn!r} failed: {type(exc).__name__}: {exc}") from exc
            ys = [self._step(g, bid, where) for g in lanes]


class _SyncThreads:
    def __call__(self):  # pragma: no cover - only reached through the collective path
        raise ModelError("__syncthreads outside a kernel-level function")

    def __repr__(self):
        return "__syncthreads"


sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
