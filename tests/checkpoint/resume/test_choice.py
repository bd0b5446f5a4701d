"""The resume rule, decided without a model: the tag first, then only this run's files."""

from hypothesis import given
from hypothesis import strategies as st

from d2_efficient_ckpt.checkpoint.formats.registry import iteration_from_name
from d2_efficient_ckpt.checkpoint.resume.choice import Candidate, choose_resume, describe_skipped
from d2_efficient_ckpt.checkpoint.save.tag import Tag

RUN, OLD = "run-now", "run-before"


def c(name, t, run=RUN, problem="", iteration=None):
    it = iteration_from_name(name) if iteration is None else iteration
    return Candidate(name, it, float(t), run, problem)


def tag(name, run=RUN):
    return Tag(name, run=run, names_tagged=True)


def test_tagged_valid_file_is_used_and_gives_the_run():
    choice = choose_resume(
        [c("model_0000001.pth", 1), c("model_0000003.pth", 3)], tag("model_0000003.pth")
    )
    assert choice.used == "model_0000003.pth" and choice.run == RUN
    assert not choice.skipped and not choice.passed_over


def test_model_final_does_not_outrank_the_tag():
    # Trained to the end, MAX_ITER extended, resumed, preempted: the tag names the newer file.
    files = [c("model_final.pth", 1, iteration=99), c("model_0000104.pth", 2)]
    assert choose_resume(files, tag("model_0000104.pth")).used == "model_0000104.pth"


def test_higher_iteration_of_an_older_run_does_not_outrank_the_tag():
    files = [c("model_0000099.pth", 1, run=OLD), c("model_0000009.pth", 2)]
    assert choose_resume(files, tag("model_0000009.pth")).used == "model_0000009.pth"


def test_a_newer_untagged_file_does_not_outrank_the_tag():
    # A save killed after its file and record, before its tag, had not finished.
    files = [c("model_0000001.pth", 1), c("model_0000002.pth", 2)]
    assert choose_resume(files, tag("model_0000001.pth")).used == "model_0000001.pth"


def test_broken_tag_falls_back_to_the_newest_valid_file_of_the_same_run():
    files = [
        c("model_0000001.pth", 1),
        c("model_0000003.pth", 3),
        c("model_0000004.pth", 4, problem="truncated"),
        c("model_0000005.pth", 5, problem="truncated"),
        c("model_0000099.pth", 0, run=OLD),
        c("backup_0000200.pth", 6, run=""),
    ]
    choice = choose_resume(files, tag("model_0000005.pth"))
    assert choice.used == "model_0000003.pth" and choice.run == RUN
    assert choice.skipped == [
        ("model_0000005.pth", "truncated"),
        ("model_0000004.pth", "truncated"),
    ]
    assert {n for n, _ in choice.passed_over} == {"model_0000099.pth", "backup_0000200.pth"}
    text = describe_skipped(choice)
    assert "model_0000099.pth" in text and "another run" in text and "no run identity" in text


def test_newest_means_written_last_not_highest_iteration():
    # The run was rolled back (last_checkpoint edited to an earlier file) and went on.
    files = [
        c("model_0000099.pth", 1),
        c("model_0000069.pth", 5),
        c("model_0000079.pth", 6, problem="x"),
    ]
    assert choose_resume(files, tag("model_0000079.pth")).used == "model_0000069.pth"


def test_missing_tagged_file_uses_the_run_file_to_find_the_run():
    files = [c("model_0000001.pth", 1), c("model_0000002.pth", 2, run=OLD)]
    choice = choose_resume(files, tag("model_0000009.pth"))
    assert choice.used == "model_0000001.pth"
    assert choice.skipped[0] == (
        "model_0000009.pth",
        "named by last_checkpoint, but the file does not exist",
    )


def test_corrupt_tag_with_a_run_file_still_falls_back_within_the_run():
    choice = choose_resume(
        [c("model_0000004.pth", 4)], Tag(None, "last_checkpoint is corrupt", RUN)
    )
    assert choice.used == "model_0000004.pth"
    assert choice.skipped == [("last_checkpoint", "last_checkpoint is corrupt")]


def test_without_any_run_nothing_is_chosen_silently():
    # No tag and no run file (a stock folder whose tag was deleted, or a job killed before its
    # first tag): nothing is of a known run, so nothing is taken, and the files are named.
    files = [c("model_0000004.pth", 4, run=""), c("model_0000005.pth", 5, run=OLD)]
    choice = choose_resume(files, Tag())
    assert choice.used is None
    assert [n for n, _ in choice.passed_over] == ["model_0000005.pth", "model_0000004.pth"]
    assert "starts from scratch" in describe_skipped(choice)


def test_unlistable_folder_reports_instead_of_starting_over():
    choice = choose_resume(
        [c("model_0000004.pth", 4, problem="x")], tag("model_0000004.pth"), "EIO"
    )
    assert choice.used is None and choice.list_error == "EIO"


_names = st.sampled_from(
    [f"model_{i:07d}.pth" for i in range(6)]
    + ["model_final.pth", "model_best.safetensors", "x_0000001.pth"]
)
_candidates = st.lists(
    st.builds(
        Candidate,
        name=_names,
        iteration=st.integers(-1, 9),
        created=st.floats(0, 100),
        run=st.sampled_from(["", OLD, RUN]),
        problem=st.sampled_from(["", "", "truncated"]),
    ),
    unique_by=lambda c: c.name,
)


@given(
    files=_candidates,
    tagged=st.one_of(st.none(), _names),
    run=st.sampled_from(["", OLD, RUN]),
    names_tagged=st.booleans(),
)
def test_rule_over_random_folders(files, tagged, run, names_tagged):
    t = Tag(tagged, run=run, names_tagged=names_tagged and tagged is not None)
    choice = choose_resume(files, t)
    by_name = {f.name: f for f in files}
    tag_ok = tagged in by_name and not by_name[tagged].problem
    if tag_ok:  # 1. the tag, when it passes
        assert choice.used == tagged and not choice.skipped
        return
    current = (by_name[tagged].run if tagged in by_name else "") or run
    assert choice.run == current
    same = [f for f in files if f.name != tagged and current and f.run == current and not f.problem]
    if not same:  # 3. nothing of this run: from scratch
        assert choice.used is None
    else:  # 2. this run's newest valid file, never another run's
        best = max(same, key=lambda f: (f.created, f.iteration, f.name))
        assert choice.used == best.name
    used = by_name.get(choice.used)
    assert used is None or (used.run == current and not used.problem)
    passed = {n for n, _ in choice.passed_over}
    for f in files:  # every valid file not of this run is named, none of this run is
        if f.name != tagged and not f.problem:
            assert (f.name in passed) == (not current or f.run != current)
