"""Which checkpoint a resume uses: the pure decision, without a model."""

from d2_efficient_ckpt.checkpoint.save.fallback import Candidate, choose_resume, iteration_from_name

INF = float("inf")


def c(name, problem="", mtime=0.0):
    return Candidate(name, iteration_from_name(name), mtime, problem)


def test_tagged_valid_file_is_used():
    choice = choose_resume([c("model_0000001.pth"), c("model_0000003.pth")], "model_0000003.pth")
    assert choice.used == "model_0000003.pth" and not choice.skipped


def test_broken_tagged_file_falls_back_to_newest_valid():
    files = [c("model_0000001.pth"), c("model_0000003.pth"), c("model_0000005.pth", "truncated")]
    choice = choose_resume(files, "model_0000005.pth")
    assert choice.used == "model_0000003.pth"
    assert choice.skipped == [("model_0000005.pth", "truncated")]


def test_missing_tagged_file_is_reported():
    choice = choose_resume([c("model_0000001.pth")], "model_0000009.pth")
    assert choice.used == "model_0000001.pth"
    assert choice.skipped[0][0] == "model_0000009.pth"


def test_newer_complete_file_than_the_tag_wins():
    # Killed after the checkpoint was written but before last_checkpoint was replaced.
    choice = choose_resume([c("model_0000001.pth"), c("model_0000002.pth")], "model_0000001.pth")
    assert choice.used == "model_0000002.pth"


def test_corrupt_or_absent_tag_never_means_from_scratch():
    choice = choose_resume([c("model_0000004.pth")], None, "last_checkpoint is corrupt (not text)")
    assert choice.used == "model_0000004.pth"
    assert choice.skipped == [("last_checkpoint", "last_checkpoint is corrupt (not text)")]
    assert choose_resume([c("model_0000004.pth")], None).used == "model_0000004.pth"


def test_final_ranks_first_and_nothing_valid_means_none():
    assert iteration_from_name("model_final.pth") == INF
    assert iteration_from_name("model_0000099.pth") == 99
    assert iteration_from_name("weights.pth") == -1
    files = [c("model_final.pth"), c("model_0000099.pth")]
    assert choose_resume(files, "model_0000099.pth").used == "model_final.pth"
    broken = [c("model_0000001.pth", "empty")]
    choice = choose_resume(broken, "model_0000001.pth")
    assert choice.used is None and choice.skipped == [("model_0000001.pth", "empty")]


def test_equal_iterations_prefer_the_tag_then_the_newest_mtime():
    files = [c("a_1.pth", mtime=5.0), c("b_1.pth", mtime=1.0)]
    assert choose_resume(files, "b_1.pth").used == "b_1.pth"
    assert choose_resume(files, None).used == "a_1.pth"
