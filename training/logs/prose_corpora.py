"""English prose and chat instructions built from the standard library, split like the `stdlib` corpus.

Two corpus specs (see docs/logging.md), each with a part `train` (default), `heldout` or `all` that uses
the same file split as `stdlib` (`training.logs.corpora.is_heldout`, by a hash of the file's path):

    stdlib-docs[:PART]     docstrings of the part's files (modules, classes, functions; at least
                           DOCSTRING_MIN_CHARS characters, dedented by `inspect.cleandoc`, mostly words),
                           one document per docstring, in file order and source order within a file;
                           then the language-reference topics of `pydoc_data/topics.py` (one document per
                           topic, in sorted topic order, kept by the same rule) when that file is in the part. Its path hashes
                           into the train part, so `stdlib-docs:train` and `:all` carry the topics and
                           `:heldout` does not, on every Python version. A text repeated in several
                           files counts once; one that also occurs in a held-out file is left out of
                           `:train`, so no held-out document is a training document.
    instructions[:PART]    short English user messages for a chat model, built from the part's modules,
                           functions and docstrings by fixed templates (`_instruction_groups`), at most
                           INSTRUCTION_CAPS of each kind (a seeded sample), in a seeded order; none of
                           `:train` is also an instruction of the held-out part. The logging code applies
                           the chat template itself.

Everything is read with `ast` from the files (nothing is imported), so it works on any CPython 3.11+ and
gives the same documents in the same order for the same Python installation.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import random
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from deferral.errors import DeferralError
from deferral.stdlib_split import STDLIB_HELDOUT_PERCENT, STDLIB_PARTS, is_heldout, stdlib_files, stdlib_root
from training.logs.corpus import Corpus

PROSE_SPECS = ("stdlib-docs", "instructions")
DOCSTRING_MIN_CHARS = 300
PROSE_MIN_WORD_SHARE = 0.5  # share of characters inside words: doctest dumps and tables fall below
TOPICS_FILE = "pydoc_data/topics.py"
BUILD_VERSION = 1  # bump when the extraction or the templates change: recorded in the corpus description

_WORD = re.compile(r"[A-Za-z]{2,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`\"'])")


def word_share(text: str) -> float:
    """Share of characters inside alphabetic words (~0.7+ for prose, ~0.4 for code or tables)."""
    return sum(len(w) for w in _WORD.findall(text)) / len(text) if text else 0.0


def _check_part(kind: str, part: str) -> str:
    part = part or "train"
    if part not in STDLIB_PARTS:
        raise DeferralError(f"unknown {kind} part '{part}': use {kind}:train, {kind}:heldout or {kind}:all")
    return part


# ---------------------------------------------------------------- reading the standard library


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, RecursionError, OSError):
        return None


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _walk_definitions(node: ast.AST, scope: tuple[str, ...] = (), in_class: bool = False):
    """(scope, node, defined in a class body) for the module and every class or function definition
    inside it (also inside if/try/with/... blocks), in source order."""
    body_of_class = in_class  # a compound statement's body is where the statement is
    if isinstance(node, (ast.Module, *_DEFINITIONS)):
        yield scope, node, in_class
        body_of_class = isinstance(node, ast.ClassDef)
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFINITIONS):
            yield from _walk_definitions(child, scope + (child.name,), body_of_class)
        elif isinstance(child, (ast.stmt, ast.excepthandler)) or type(child).__name__ == "match_case":
            yield from _walk_definitions(child, scope, body_of_class)


def module_name(relative: str) -> str:
    """'xml/dom/minidom.py' -> 'xml.dom.minidom'; 'json/__init__.py' -> 'json'."""
    parts = relative[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Definition:
    """A module, class or function of a stdlib file, as far as the corpora need it."""

    scope: tuple[str, ...]  # () for the module, ('Class', 'method') for a method
    function: bool
    method: bool  # a function defined in a class body
    doc: str  # cleaned docstring ('' when none)
    signature: str  # `name(args)` of a function, '' otherwise


def _definitions(tree: ast.Module) -> list[Definition]:
    out = []
    for scope, node, in_class in _walk_definitions(tree):
        doc = ast.get_docstring(node, clean=True) or ""  # clean=True is inspect.cleandoc
        doc = "\n".join(line.rstrip() for line in doc.split("\n")).strip()  # no trailing spaces either
        function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        method = function and in_class
        signature = _signature(node, method) if function and doc else ""
        out.append(Definition(scope, function, method, doc, signature))
    return out


@lru_cache(maxsize=4)
def _parsed_part(part: str, root: str) -> tuple[tuple[str, tuple[Definition, ...]], ...]:
    """(relative path, definitions) of every parsable file of a stdlib part, sorted by relative path.

    Only the extracted definitions are kept: holding hundreds of syntax trees at once makes the garbage
    collector's passes (and the whole read) several times slower.
    """
    if part == "all":  # the union of the two disjoint parts, parsed once
        return tuple(sorted(_parsed_part("train", root) + _parsed_part("heldout", root), key=lambda item: item[0]))
    base = Path(root)
    out = []
    for path in stdlib_files(part):
        tree = _parse(path)
        if tree is not None:
            out.append((path.relative_to(base).as_posix(), tuple(_definitions(tree))))
    return tuple(out)


def _topics_in_part(part: str) -> bool:
    return (stdlib_root() / TOPICS_FILE).is_file() and (part == "all" or (part == "heldout") == is_heldout(TOPICS_FILE))


def pydoc_topics() -> list[tuple[str, str]]:
    """(topic, text) of `pydoc_data/topics.py`, sorted by topic, read with ast (never imported)."""
    tree = _parse(stdlib_root() / TOPICS_FILE)
    if tree is None:
        return []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "topics" for t in targets) and node.value is not None:
            try:
                topics = ast.literal_eval(node.value)
            except ValueError:
                return []
            return sorted((k, "\n".join(ln.rstrip() for ln in v.split("\n")).strip())
                          for k, v in topics.items() if isinstance(v, str))
    return []


# ---------------------------------------------------------------- stdlib-docs


def _is_prose_docstring(doc: str | None) -> bool:
    return bool(doc) and len(doc) >= DOCSTRING_MIN_CHARS and word_share(doc) >= PROSE_MIN_WORD_SHARE


@lru_cache(maxsize=4)
def _part_docstrings(part: str, root: str) -> tuple[str, ...]:
    docs: list[str] = []
    for _, definitions in _parsed_part(part, root):
        docs += [d.doc for d in definitions if _is_prose_docstring(d.doc)]
    if _topics_in_part(part):
        docs += [text for _, text in pydoc_topics() if _is_prose_docstring(text)]  # the same rule
    return tuple(dict.fromkeys(docs))  # a docstring repeated in several files counts once


@lru_cache(maxsize=4)
def _stdlib_docs(part: str, root: str) -> tuple[str, ...]:
    docs = _part_docstrings(part, root)
    if part == "train":  # a text that also occurs in a held-out file is held out
        heldout = set(_part_docstrings("heldout", root))
        docs = tuple(d for d in docs if d not in heldout)
    return docs


def stdlib_docs(part: str = "train") -> list[str]:
    """The documents of `stdlib-docs:PART` (see the module docstring)."""
    return list(_stdlib_docs(_check_part("stdlib-docs", part), str(stdlib_root())))


# ---------------------------------------------------------------- instructions

# Imperative first words of docstrings ("Return the ...") that read as "... that returns the ...".
_VERBS = set("""
accept acquire add adjust advance allocate append apply arrange assert assign attach build calculate call cancel
change check choose clean clear close collect combine compare compile complete compute configure connect construct
convert copy count create decode decompress decorate define delete deliver describe detect determine disable
discard dispatch display do dump emit enable encode end ensure enter escape evaluate examine execute exit expand
extend extract fetch fill filter find finish fix flush format generate get guess handle hash ignore implement import
indicate initialize initialise insert inspect install interpret invoke iterate join keep load locate lock log look
make map mark match merge modify move normalize notify open pack parse pass perform pop prepare print process
produce provide push put quote raise read receive record reduce refresh register reload remove rename render
replace report represent request reset resolve restore retrieve return reverse run save scan schedule search seek
select send serialize set setup show shut shutdown signal skip sort split start step stop store strip submit
substitute swap take tell terminate test translate truncate try turn unescape unlock unpack unquote unregister
update use validate verify visit wait walk wrap write yield manage highlight
""".split())
_TOPIC_TEMPLATES = (
    "Write a short paragraph about {topic}.",
    "Explain {topic} to someone who has never programmed.",
    "Give three practical tips for working with {topic}.",
    "What are the advantages and disadvantages of {topic}?",
    "Write a friendly email to a colleague recommending {topic}.",
    "Describe a real-world situation where {topic} would be useful.",
    "Write a haiku about {topic}.",
    "List five questions a student might ask about {topic}, with short answers.",
    "Compare {topic} with {other} in a short paragraph.",
    "Write a two-sentence summary of {topic} for a newsletter.",
    "Explain {topic} using an everyday analogy.",
    "Write the opening paragraph of a blog post about {topic}.",
    "What common mistakes do beginners make with {topic}?",
    "Write a short dialogue between a teacher and a student about {topic}.",
)
_MODULE_TEMPLATES = (
    "Explain what the Python module `{module}` is for.",
    "What is the Python module `{module}` used for? Give a short example.",
    "When would I use the Python module `{module}`?",
)
_FUNCTION_TEMPLATES = (
    "Write a Python function `{signature}` that {clause}.",
    "Implement a Python function `{signature}` that {clause}.",
    "Write a Python function `{signature}` that {clause}. Include a docstring.",
)
_FUNCTION_FALLBACK = "Implement `{signature}` in Python. Its documentation says: \"{sentence}\""
_SUMMARY_TEMPLATES = (
    "Summarize in two sentences:\n\n{text}",
    "Summarize the following text in one sentence:\n\n{text}",
    "What is the main point of this passage?\n\n{text}",
)
_REWRITE_TEMPLATES = (
    "Rewrite this docstring in plain English:\n\n{text}",
    "Explain this documentation to a beginner:\n\n{text}",
)
# How many instructions each group contributes at most (a seeded sample of the group when it has more).
INSTRUCTION_CAPS = {"function": 1600, "module": 500, "summary": 700, "rewrite": 500, "topic": 1200}


def first_sentence(text: str, max_chars: int = 200) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed ('' when too long)."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    sentence = _SENTENCE_END.split(paragraph, maxsplit=1)[0].strip()
    return sentence if 0 < len(sentence) <= max_chars else ""


def third_person(verb: str) -> str:
    """'Return' -> 'returns', 'Fetch' -> 'fetches', 'Copy' -> 'copies'."""
    v = verb.lower()
    if v.endswith(("s", "x", "z", "ch", "sh")):
        return v + "es"
    if v.endswith("y") and v[-2:-1] not in ("a", "e", "i", "o", "u"):
        return v[:-1] + "ies"
    if v == "do":
        return "does"
    return v + "s"


def _clause(sentence: str) -> str | None:
    """'Return the sum of x.' -> 'returns the sum of x'; None when the sentence does not start with a verb."""
    words = sentence.rstrip(".").split(" ", 1)
    first = words[0]
    lower = first.lower()
    if not first.isalpha() or len(words) < 2:
        return None
    if lower in _VERBS:
        return f"{third_person(lower)} {words[1]}"
    for stem in (lower[:-1], lower[:-2], lower[:-3] + "y"):  # 'Returns', 'Fetches', 'Copies'
        if stem in _VERBS and third_person(stem) == lower:
            return f"{lower} {words[1]}"
    return None


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> str:
    """`name(args)` without annotations; a method loses its first parameter (self/cls) unless static."""
    args = copy.deepcopy(node.args)
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if method and not static:
        if args.posonlyargs:
            args.posonlyargs = args.posonlyargs[1:]
        elif args.args:
            args.args = args.args[1:]
        positional = len(args.posonlyargs) + len(args.args)
        if len(args.defaults) > positional:  # defaults belong to the last positional parameters
            args.defaults = args.defaults[len(args.defaults) - positional :]
    for a in ast.walk(args):
        if isinstance(a, ast.arg):
            a.annotation = None
    return f"{node.name}({ast.unparse(args)})"


def _wrapped_paragraphs(doc: str) -> list[str]:
    """Paragraphs of running text (no lists, fields, tables or code), re-joined on one line."""
    out = []
    for block in doc.split("\n\n"):
        lines = block.split("\n")
        if " -- " in block or any(not line.strip() or line.startswith((" ", "\t")) or line.lstrip().startswith(("-", "*", "+", ":", ">>>", "|", ".."))
               or line.rstrip().endswith(":") or "  " in line.strip() for line in lines):
            continue
        out.append(" ".join(" ".join(lines).split()))
    return out


def _is_plain_text(doc: str) -> bool:
    """A docstring that reads as text: mostly words, no doctest, few short (field or list) lines."""
    lines = [line for line in doc.split("\n") if line.strip()]
    short = sum(len(line.split()) < 3 for line in lines)
    return word_share(doc) >= 0.65 and ">>>" not in doc and "__" not in doc and short <= 0.25 * len(lines)


def _topic_of(line: str) -> str | None:
    """A noun phrase to write about, from a module docstring's first line or a reference topic's title."""
    topic = _SENTENCE_END.split(line.strip(), maxsplit=1)[0].rstrip(".:").strip()
    topic = re.sub(r"^(the )?(module|package)\s+\S+\s+(--|-|:)\s+", "", topic, flags=re.I)
    words = topic.split()
    if not 8 <= len(topic) <= 70 or len(words) < 2 or not words[0][:1].isalpha() or re.search(r"[()_.;=\[\]{}<>/\\]", topic):
        return None
    if _clause(topic + " x") is not None or re.search(r"\b(is|are|was|provides|implements|contains|defines)\b", topic):
        return None  # 'Provide the ...', 'The io module provides ...': a sentence, not a topic
    if all(w[:1].isupper() for w in words if w[:1].isalpha() and w.lower() not in ("of", "and", "the")):
        topic = " ".join(w if w.isupper() else w.lower() for w in words)  # 'Special Attributes'
    elif topic[0].isupper() and not topic[1:2].isupper():
        topic = topic[0].lower() + topic[1:]
    return topic


def _pick(items: list[str], cap: int, rng: random.Random) -> list[str]:
    items = list(dict.fromkeys(items))
    return items if len(items) <= cap else [items[i] for i in sorted(rng.sample(range(len(items)), cap))]


@lru_cache(maxsize=4)
def _instruction_groups(part: str, root: str) -> dict[str, tuple[str, ...]]:
    """Every candidate instruction of a part, by group, before the caps."""
    rng = random.Random(f"instruction-topics:{part}:{BUILD_VERSION}")
    groups: dict[str, list[str]] = {k: [] for k in INSTRUCTION_CAPS}
    topics: list[str] = []

    def cycle(name: str, templates: tuple[str, ...], **fields) -> None:
        groups[name].append(templates[len(groups[name]) % len(templates)].format(**fields))

    for relative, definitions in _parsed_part(part, root):
        module = module_name(relative)
        if any(p.startswith("_") for p in module.split(".")) or module.startswith("encodings."):
            continue  # private modules and codec tables: no instructions about them
        for d in definitions:
            if not d.doc:
                continue
            if not d.scope:  # the module
                cycle("module", _MODULE_TEMPLATES, module=module)
                topic = _topic_of(d.doc.split("\n")[0])
                if topic and not module.startswith(("idlelib", "lib2to3")):
                    topics.append(topic)
            elif (d.function and (len(d.scope) == 1 or len(d.scope) == 2 and d.method)
                  and not any(s.startswith("_") for s in d.scope)):  # functions and methods of top-level classes
                sentence = first_sentence(d.doc)
                if (len(sentence) < 20 or ">>>" in sentence or not sentence[0].isalpha() or len(d.signature) > 80
                        or re.search(r"\s[,.;:]|[,:;]\s*\.?$|->", sentence) or sentence.startswith(d.scope[-1] + "(")):
                    continue
                signature = f"{d.scope[0]}.{d.signature}" if len(d.scope) == 2 else d.signature
                clause = _clause(sentence)
                if clause:
                    cycle("function", _FUNCTION_TEMPLATES, signature=signature, clause=clause)
                else:
                    groups["function"].append(_FUNCTION_FALLBACK.format(signature=signature, sentence=sentence))
            paragraph = next((p for p in _wrapped_paragraphs(d.doc) if 200 <= len(p) <= 700 and word_share(p) >= 0.7), None)
            if paragraph:
                cycle("summary", _SUMMARY_TEMPLATES, text=paragraph)
            if 300 <= len(d.doc) <= 900 and _is_plain_text(d.doc):
                cycle("rewrite", _REWRITE_TEMPLATES, text=d.doc)
    if _topics_in_part(part):
        for _, text in pydoc_topics():
            title = _topic_of(text.split("\n")[0])
            if title:
                topics.append(title)
    topics = list(dict.fromkeys(topics))
    for i, topic in enumerate(topics):  # four templates per topic, drawn by the seeded generator
        for template in rng.sample(_TOPIC_TEMPLATES, 4):
            other = topics[(i + 1 + rng.randrange(max(1, len(topics) - 1))) % len(topics)]
            groups["topic"].append(template.format(topic=topic, other=other))
    return {name: tuple(dict.fromkeys(items)) for name, items in groups.items()}


@lru_cache(maxsize=4)
def _instructions(part: str, root: str) -> tuple[str, ...]:
    groups = _instruction_groups(part, root)
    if part == "train":  # an instruction that the held-out part also gives is held out
        heldout = {x for items in _instruction_groups("heldout", root).values() for x in items}
        groups = {name: tuple(x for x in items if x not in heldout) for name, items in groups.items()}
    rng = random.Random(f"instructions:{part}:{BUILD_VERSION}")
    out = list(dict.fromkeys(x for name, cap in INSTRUCTION_CAPS.items() for x in _pick(list(groups[name]), cap, rng)))
    rng.shuffle(out)
    return tuple(out)


def instructions(part: str = "train") -> list[str]:
    """The documents of `instructions:PART` (see the module docstring)."""
    return list(_instructions(_check_part("instructions", part), str(stdlib_root())))


# ---------------------------------------------------------------- corpus


def open_prose_corpus(kind: str, spec: str, part: str) -> Corpus:
    """A Corpus for `stdlib-docs[:PART]` or `instructions[:PART]`."""
    if kind not in PROSE_SPECS:
        raise DeferralError(f"unknown corpus '{kind}': use one of {', '.join(PROSE_SPECS)}")
    part = _check_part(kind, part)
    docs = stdlib_docs(part) if kind == "stdlib-docs" else instructions(part)
    if not docs:
        raise DeferralError(f"--data {spec} gave no documents from {stdlib_root()}: check this Python's standard library")
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(hashlib.sha256(doc.encode()).digest())
    description = {
        "kind": kind, "spec": spec, "part": part, "heldout_percent": STDLIB_HELDOUT_PERCENT,
        "python": sys.version.split()[0], "build_version": BUILD_VERSION, "documents": len(docs),
        "chars": sum(map(len, docs)), "sha256": digest.hexdigest(),
    }
    if kind == "stdlib-docs":
        description.update(min_chars=DOCSTRING_MIN_CHARS, min_word_share=PROSE_MIN_WORD_SHARE,
                           topics=_topics_in_part(part))
    docs = tuple(docs)
    return Corpus(description, lambda: iter(docs))
