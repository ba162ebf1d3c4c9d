"""``--question`` (the search log, issue 29) is one option, spelt and explained the same by the seven jobs that
write experiments, refused when blank before any work runs; and a real run stores it: pipelines.train (the prior
head, in-process, on a copy of the trained demo store) puts it on the row it writes, a re-run keeps the row's answer.
Wall time: ~2 s for the options (imports), ~6 s for the train run (the store copy, one prior head).
"""

from __future__ import annotations

import argparse
import importlib

import pytest

from featurestore.store import FeatureStore
from models.experiments import latest_row, record_answer

JOBS = ("train", "tune", "stack", "pseudo", "selftrain", "distill", "cnn")


class _Parsed(Exception):
    pass


def _parser(job: str) -> argparse.ArgumentParser:
    """The job's own parser, caught before it parses anything (no work runs)."""
    module = importlib.import_module(f"pipelines.{job}")
    original = argparse.ArgumentParser.parse_args
    caught = []

    def stop(self, args=None, namespace=None):
        caught.append(self)
        raise _Parsed

    argparse.ArgumentParser.parse_args = stop
    try:
        module.main([])
    except _Parsed:
        return caught[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"pipelines.{job}: no parser")


def test_the_seven_jobs_spell_question_the_same() -> None:
    from pipelines._cli import add_question

    reference = argparse.ArgumentParser()
    add_question(reference)
    want = reference._option_string_actions["--question"]
    for job in JOBS:
        action = _parser(job)._option_string_actions.get("--question")
        assert action is not None, f"pipelines.{job} has no --question"
        assert (action.help, action.metavar, action.default) == (want.help, want.metavar, None), job
        assert "pipelines.answer" in action.help
        assert action.type("  does max pooling help? ") == "does max pooling help?"
        with pytest.raises(argparse.ArgumentTypeError, match="empty"):
            action.type("   ")


def test_train_stores_the_question_on_its_row(demo_trained, store_copy) -> None:
    from pipelines.train import main

    store = store_copy(demo_trained.store, "question")
    head = demo_trained.head("prior")
    with FeatureStore.open(store) as fs:
        record_answer(fs, head, "the floor: 0.5 on every class", "reproduced")
    assert main(["--store", str(store), "--head-kind", "prior", "--features", "birdnet", "--quiet",
                 "--question", "what does the class prior score?"]) == 0
    with FeatureStore.open(store, read_only=True) as fs:
        row = latest_row(fs, head)
    assert row["question"] == "what does the class prior score?"
    assert (row["answer"], row["verdict"]) == ("the floor: 0.5 on every class", "reproduced")   # kept by the re-run
