"""The output folder of `deferral evaluate`: results.jsonl, generations.jsonl and run.json, appended
row by row and resumed after an interruption; a folder of another setup is refused."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from deferral.errors import DeferralError
from deferral.outputs import read_json_record, read_jsonl

ROUTER_KEY = "router"  # the setup's record of the learned rule's router (its files' sha256)


def setup_differences(one: dict, other: dict) -> list[str]:
    return sorted(k for k in set(one) | set(other) if one.get(k) != other.get(k))


class ResultsStore:
    """results.jsonl + generations.jsonl + run.json in one folder; appends and resumes."""

    def __init__(self, out: Path, setup: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.results, self.generations, self.meta_path = out / "results.jsonl", out / "generations.jsonl", out / "run.json"
        fix = f"choose a new --out, or delete {out} to start it over"
        self.meta = read_json_record(self.meta_path, fix) if self.meta_path.is_file() else {}
        self.rows = read_jsonl(self.results, repair=True)  # a row cut by an interruption is redone
        if self.meta:
            setup = self._check_setup(self.meta.get("setup") or {}, setup)
        self.meta["setup"] = setup
        self._save_meta()
        self.done = {row["key"] for row in self.rows}
        self._drop_unfinished()

    def _check_setup(self, stored: dict, setup: dict) -> dict:
        """The setup to record, or DeferralError when the folder holds rows of another setup.

        The router's identity decides only the learned rule's rows: a run that sweeps no learned rule
        keeps the recorded router, and a folder without learned rows takes the router of this run.
        """
        stored, setup = dict(stored), dict(setup)
        if ROUTER_KEY not in setup and ROUTER_KEY in stored:
            setup[ROUTER_KEY] = stored[ROUTER_KEY]
        if ROUTER_KEY in setup and ROUTER_KEY not in stored and not any(r["rule"] == "learned" for r in self.rows):
            stored[ROUTER_KEY] = setup[ROUTER_KEY]
        if stored != setup:
            changed = setup_differences(stored, setup)
            raise DeferralError(
                f"{self.out} holds results of another setup (different {', '.join(changed) or 'settings'}): "
                "pass another --out or delete that folder"
            )
        return setup

    def _drop_unfinished(self) -> None:
        """After an interruption: keep only the generations of complete rows."""
        generations = read_jsonl(self.generations)
        kept = [g for g in generations if g["key"] in self.done]
        if len(kept) != len(generations):
            self.generations.write_text("".join(json.dumps(g) + "\n" for g in kept))

    def _save_meta(self) -> None:
        self.meta_path.write_text(json.dumps(self.meta, indent=1, default=str))

    def replies(self, key: str) -> list[str] | None:
        texts = {}
        for row in read_jsonl(self.generations):
            if row["key"] == key:
                texts[row["index"]] = row["text"]
        return [texts[i] for i in sorted(texts)] if texts else None

    def append(self, row: dict, replies: list[str], tokens: list[list[int]]) -> None:
        # Generations first: a row in results.jsonl means its texts are on disk.
        with open(self.generations, "a") as f:
            for i, (text, ids) in enumerate(zip(replies, tokens)):
                f.write(json.dumps({"key": row["key"], "index": i, "text": text, "tokens": ids}) + "\n")
        with open(self.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        self.done.add(row["key"])

    def adopt(self, folder: Path, keys: list[str]) -> None:
        """Copy the rows of `keys` this folder lacks, with their texts, from another output folder whose
        setup is this one's, the router aside (rows the other folder lacks are decoded here)."""
        meta = folder / "run.json"
        if not meta.is_file():
            raise DeferralError(f"--references-from {folder} holds no evaluation (no run.json): pass an --out of "
                                "`deferral evaluate`")
        without_router = lambda setup: {k: v for k, v in setup.items() if k != ROUTER_KEY}  # noqa: E731
        other = without_router(read_json_record(meta, f"pass another --references-from than {folder}").get("setup") or {})
        changed = setup_differences(other, without_router(self.meta["setup"]))
        if changed:
            raise DeferralError(f"--references-from {folder} holds results of another setup (different "
                                f"{', '.join(changed)}): pass a folder evaluated with the same settings")
        rows = {row["key"]: row for row in read_jsonl(folder / "results.jsonl")}
        wanted = [key for key in keys if key in rows and key not in self.done]
        texts: dict[str, dict[int, dict]] = {key: {} for key in wanted}
        for generation in read_jsonl(folder / "generations.jsonl"):
            if generation["key"] in texts:
                texts[generation["key"]][generation["index"]] = generation
        for key in wanted:
            ordered = [texts[key][i] for i in sorted(texts[key])]
            self.append(rows[key], [g["text"] for g in ordered], [g["tokens"] for g in ordered])
        if wanted:
            print(f"{', '.join(wanted)}: taken from {folder}", file=sys.stderr)

    def update(self, rows: list[dict]) -> None:
        """Replace the rows of the same keys (the timing stage's latencies) and rewrite results.jsonl
        in one step (a new file renamed over the old one)."""
        new = {row["key"]: row for row in rows}
        self.rows = [new.get(row["key"], row) for row in self.rows]
        temporary = self.results.with_name(self.results.name + ".tmp")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
        os.replace(temporary, self.results)

    def set_meta(self, **values) -> None:
        self.meta.update(values)
        self._save_meta()
