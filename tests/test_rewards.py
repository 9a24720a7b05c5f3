"""Tests of the TempAct and ReaDe rewards and the reward registry: weights against hand arithmetic, normalisation,
malformed judge outputs as clear errors, the format reward on crafted strings, the content reward with a toy judge."""

import dataclasses
import json
import math

import numpy as np
import pytest

from planx_jax import rewards
from planx_jax.rewards import reade, tempact
from planx_jax.world import rewards as world_rewards

PLAN_JUDGE = {"faithfulness_score": 0.8, "coverage_score": 0.6, "temporal_score": 0.5, "hallucination_score": 0.2}
VIDEO_JUDGE = {"think": {"frame_evidence": ["frame 1: ok"], "detected_errors": [], "aggregation_logic": "..."},
               "frame_scores": [8, 6, 7, 9], "temporal_order_score": 6, "physical_plausibility_score": 7,
               "visual_consistency_score": 9, "prompt_alignment_score": 5, "final_score": 8}
STEP_JUDGE = {"think": {"detected_errors": ["none"]}, "subject_score": 9, "scene_score": 8, "action_score": 4,
              "object_appearance_reasonability_score": 6, "final_score": 5}


# --- TempAct ------------------------------------------------------------------------------------------------

def test_judge_reward_by_hand():
  # 0.4 * 0.8 + 0.25 * 0.6 + 0.25 * 0.5 - 0.3 * 0.2 = 0.32 + 0.15 + 0.125 - 0.06
  assert tempact.judge_reward(PLAN_JUDGE) == pytest.approx(0.535, abs=1e-12)


def test_video_reward_by_hand():
  # frames mean 7.5 / 10 = 0.75; 0.2 * 0.75 + 0.3 * 0.8 + 0.2 * 0.6 + 0.1 * 0.7 + 0.1 * 0.9 + 0.1 * 0.5
  #   = 0.15 + 0.24 + 0.12 + 0.07 + 0.09 + 0.05
  assert tempact.video_reward(VIDEO_JUDGE) == pytest.approx(0.72, abs=1e-12)


def test_plan_reward_by_hand():
  # mean_n R_video = (0.72 + 0.5 + 0.64) / 3 = 0.62; 0.15 * 0.535 + 0.85 * 0.62 = 0.08025 + 0.527
  assert tempact.plan_reward(0.535, [0.72, 0.5, 0.64]) == pytest.approx(0.60725, abs=1e-12)


def test_step_reward_by_hand():
  # 0.15 * 0.9 + 0.15 * 0.8 + 0.2 * 0.4 + 0.2 * 0.6 + 0.3 * 0.5 = 0.135 + 0.12 + 0.08 + 0.12 + 0.15
  assert tempact.step_reward(STEP_JUDGE) == pytest.approx(0.605, abs=1e-12)


def test_exec_reward_by_hand():
  # 0.6 * 0.605 + 0.4 * 0.8 = 0.363 + 0.32
  assert tempact.exec_reward(0.605, 0.8) == pytest.approx(0.683, abs=1e-12)


def test_normalisation_to_unit_range():
  top_video = {**VIDEO_JUDGE, "frame_scores": [10, 10], **{k: 10 for k in VIDEO_JUDGE if k.endswith("_score")}}
  low_video = {**VIDEO_JUDGE, "frame_scores": [0], **{k: 0 for k in VIDEO_JUDGE if k.endswith("_score")}}
  assert tempact.video_reward(top_video) == pytest.approx(1.0, abs=1e-12)
  assert tempact.video_reward(low_video) == 0.0
  assert tempact.step_reward({**STEP_JUDGE, **{k: 10 for k in STEP_JUDGE if k.endswith("_score")}}) == \
      pytest.approx(1.0, abs=1e-12)
  best_plan = {"faithfulness_score": 1, "coverage_score": 1, "temporal_score": 1, "hallucination_score": 0}
  worst_plan = {"faithfulness_score": 0, "coverage_score": 0, "temporal_score": 0, "hallucination_score": 1}
  assert tempact.judge_reward(best_plan) == pytest.approx(0.9, abs=1e-12)  # 0.4 + 0.25 + 0.25
  assert tempact.judge_reward(worst_plan) == pytest.approx(-0.3, abs=1e-12)


def test_plan_judge_scale_is_configurable():
  on_ten = {k: 10 * v for k, v in PLAN_JUDGE.items()}
  weights = dataclasses.replace(tempact.JUDGE_WEIGHTS, scale=10.0)
  assert tempact.judge_reward(on_ten, weights) == pytest.approx(tempact.judge_reward(PLAN_JUDGE), abs=1e-12)
  with pytest.raises(ValueError, match="faithfulness_score"):
    tempact.judge_reward(on_ten)  # 8.0 is out of the default [0, 1]


def test_custom_weights():
  only_final = tempact.StepWeights(subject=0.0, scene=0.0, action=0.0, object=0.0, final=1.0)
  assert tempact.step_reward(STEP_JUDGE, only_final) == pytest.approx(0.5, abs=1e-12)
  only_frames = tempact.VideoWeights(frame=1.0, final=0.0, temporal=0.0, physical=0.0, visual=0.0, alignment=0.0)
  assert tempact.video_reward(VIDEO_JUDGE, only_frames) == pytest.approx(0.75, abs=1e-12)
  assert tempact.exec_reward(0.2, 0.9, tempact.ExecWeights(step=1.0, aesthetic=0.0)) == pytest.approx(0.2)
  assert tempact.plan_reward(0.3, [0.9], tempact.PlanWeights(judge=1.0, video=0.0)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="scale"):
    tempact.StepWeights(scale=0.0)
  with pytest.raises(ValueError, match="final"):
    tempact.StepWeights(final=float("nan"))
  with pytest.raises(dataclasses.FrozenInstanceError):
    tempact.STEP_WEIGHTS.final = 1.0


def test_json_strings_are_parsed():
  assert tempact.video_reward(json.dumps(VIDEO_JUDGE)) == tempact.video_reward(VIDEO_JUDGE)
  wrapped = "<think>frame 2 blurs</think>\n```json\n" + json.dumps(STEP_JUDGE) + "\n```"
  assert tempact.step_reward(wrapped) == tempact.step_reward(STEP_JUDGE)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("final_score"), "final_score"),
    (lambda d: d.update(final_score="7"), "final_score"),
    (lambda d: d.update(temporal_order_score=None), "temporal_order_score"),
    (lambda d: d.update(visual_consistency_score=True), "visual_consistency_score"),
    (lambda d: d.update(prompt_alignment_score=10.5), "prompt_alignment_score"),
    (lambda d: d.update(physical_plausibility_score=-1), "physical_plausibility_score"),
    (lambda d: d.update(final_score=float("nan")), "final_score"),
    (lambda d: d.update(frame_scores=[7, "8"]), "frame_scores[1]"),
    (lambda d: d.update(frame_scores=[]), "frame_scores"),
    (lambda d: d.update(frame_scores=7), "frame_scores"),
    (lambda d: d.pop("frame_scores"), "frame_scores"),
])
def test_malformed_video_judge_is_an_error(edit, field):
  bad = json.loads(json.dumps(VIDEO_JUDGE))
  edit(bad)
  with pytest.raises(ValueError) as info:
    tempact.video_reward(bad)
  message = str(info.value)
  assert repr(field) in message and "the output has keys [" in message and "'frame_scores'" in message, message


def test_missing_field_message_lists_the_keys():
  bad = {k: v for k, v in PLAN_JUDGE.items() if k != "hallucination_score"}
  with pytest.raises(ValueError, match=r"no field 'hallucination_score'.*\['coverage_score', 'faithfulness_score', "
                                       r"'temporal_score'\]"):
    tempact.judge_reward(bad)
  with pytest.raises(ValueError, match="'object_appearance_reasonability_score'"):
    tempact.step_reward({k: v for k, v in STEP_JUDGE.items() if k != "object_appearance_reasonability_score"})


def test_nan_in_json_text_is_an_error():
  with pytest.raises(ValueError, match="'final_score'"):
    tempact.step_reward(json.dumps(STEP_JUDGE).replace('"final_score": 5', '"final_score": NaN'))


@pytest.mark.parametrize("text, match", [
    ('{"subject_score": 9, "scene_score": ', "not valid JSON"),
    ("The video shows a cat; I give it 7/10.", "not valid JSON"),
    ("[1, 2, 3]", "must be a JSON object"),
    ("", "not valid JSON"),
])
def test_bad_json_is_an_error_quoting_the_text(text, match):
  with pytest.raises(ValueError, match=match) as info:
    tempact.step_reward(text)
  assert repr(text[:20])[1:-1] in str(info.value)


def test_non_dict_output_and_bad_reward_inputs():
  with pytest.raises(ValueError, match="dict or a JSON string"):
    tempact.judge_reward(None)
  with pytest.raises(ValueError, match="r_videos"):
    tempact.plan_reward(0.5, [])
  with pytest.raises(ValueError, match=r"r_videos\[1\]"):
    tempact.plan_reward(0.5, [0.5, float("nan")])
  with pytest.raises(ValueError, match="r_judge"):
    tempact.plan_reward("0.5", [0.5])
  with pytest.raises(ValueError, match="r_aes"):
    tempact.exec_reward(0.5, None)


# --- ReaDe --------------------------------------------------------------------------------------------------

CAPTION = "\n".join(f"{i + 1}. {heading}: the {name.replace('_', ' ')} text."
                    for i, (name, heading) in enumerate(reade.CAPTION_PARTS))
THINK = "<think>The user wants a red circle moving left; the camera is unspecified, so keep it fixed.</think>"
ANSWER = f"<answer>{CAPTION}</answer>"


def caption_without(index: int) -> str:
  return "\n".join(line for i, line in enumerate(CAPTION.split("\n")) if i != index)


def caption_swapped(i: int, j: int) -> str:
  lines = CAPTION.split("\n")
  lines[i], lines[j] = lines[j], lines[i]
  return "\n".join(lines)


@pytest.mark.parametrize("text, expected", [
    (f"{THINK}\n{ANSWER}", 1.0),  # well-formed both
    (f"  {THINK}{ANSWER}\n", 1.0),  # surrounding whitespace is fine
    (THINK, 0.2),  # only think
    (f"{THINK}\nHere is the caption: {CAPTION}", 0.2),  # think, caption without answer tags
    (ANSWER, 0.2),  # only answer
    ("A red circle moves left on a gray background.", 0.0),  # neither
    (f"<think>reasoning\n{ANSWER}", 0.0),  # unclosed think: the answer does not follow a think block either
    (f"{THINK}\n<answer>{CAPTION}", 0.2),  # unclosed answer
    (f"{ANSWER}\n{THINK}", 0.0),  # misordered
    (f"<think>reasoning {ANSWER}</think>", 0.0),  # answer nested in think
    (f"<think>a <think>b</think></think>\n{ANSWER}", 0.2),  # nested think: the answer still follows </think>
    (f"{THINK}\n<answer>{caption_without(3)}</answer>", 0.2),  # answer missing the movement caption
    (f"<answer>{caption_without(5)}</answer>", 0.0),  # only answer, missing the camera caption
    (f"<think>   </think>\n{ANSWER}", 0.2),  # blank reasoning
    (f"{THINK}\n{ANSWER}\nThanks!", 0.2),  # text after the answer
    (f"{THINK} and more {ANSWER}", 0.2),  # text between the blocks
    (f"{THINK}\n{ANSWER}{ANSWER}", 0.2),  # two answers
    (f"<Think>r</Think>\n{ANSWER}", 0.0),  # tags are case-sensitive: stray text before the answer
    (f"{THINK}\n<ANSWER>{CAPTION}</ANSWER>", 0.2),
])
def test_format_reward(text, expected):
  assert reade.format_reward(text) == expected


def test_format_reward_rejects_non_strings():
  with pytest.raises(ValueError, match="string"):
    reade.format_reward(None)


def test_parse_caption():
  parts = reade.parse_caption(CAPTION)
  assert list(parts) == [name for name, _ in reade.CAPTION_PARTS]
  assert parts["main_object"] == "the main object text."
  one_line = "1. dense caption: a. 2. MAIN OBJECT CAPTION: b 3. Background caption: c 4. Movement caption: d " \
             "5. Style caption: e 6. Camera caption: f"
  assert reade.parse_caption(one_line) == dict(zip(parts, ["a.", "b", "c", "d", "e", "f"]))


@pytest.mark.parametrize("caption, match", [
    (caption_without(0), "headings"),
    (caption_swapped(1, 3), "headings"),
    (CAPTION.replace("4. Movement", "2. Movement").replace("2. Main", "4. Main"), "numbered 4, expected 2"),
    (CAPTION + "\n6. Camera caption: again", "headings"),
    (CAPTION.replace("3. Background", "7. Background"), "numbered 7, expected 3"),
    (CAPTION.replace("the style text.", " "), "'Style caption' is empty"),
    ("Caption follows. " + CAPTION, "text before"),
    ("", "headings"),
])
def test_parse_caption_errors(caption, match):
  with pytest.raises(ValueError, match=match):
    reade.parse_caption(caption)


def test_extract_answer():
  assert reade.extract_answer(f"{THINK}\n{ANSWER}") == CAPTION
  with pytest.raises(ValueError, match="no well-formed <answer>"):
    reade.extract_answer(THINK)


def substring_match(element: str, caption: str) -> bool:
  return element.lower() in caption.lower()


REFERENCE = {"user": ["red circle", "moves left", "gray background"], "detail": ["fixed camera", "wide shot"],
             "supp": ["soft light", "shadow", "calm mood", "slow pace"]}
PREDICTED = "A red circle moves left under soft light; a fixed camera; a calm mood."


def test_content_reward_by_hand():
  # user 2/3 (red circle, moves left), detail 1/2 (fixed camera), supp 2/4 (soft light, calm mood), no contradiction:
  # 1.0 * 2/3 + 1.0 * 1/2 + 0.8 * 1/2 - 0.7 * 0
  out = reade.content_reward(PREDICTED, REFERENCE, substring_match, contradict_fn=lambda caption: False)
  assert out["user"] == pytest.approx(2 / 3) and out["detail"] == 0.5 and out["supp"] == 0.5 and out["contra"] == 0
  assert out["reward"] == pytest.approx(2 / 3 + 0.5 + 0.4, abs=1e-12)
  contradicted = reade.content_reward(PREDICTED, REFERENCE, substring_match, contradict_fn=lambda caption: True)
  assert contradicted["reward"] == pytest.approx(2 / 3 + 0.5 + 0.4 - 0.7, abs=1e-12)
  weighted = reade.content_reward(PREDICTED, REFERENCE, substring_match, (2.0, 0.0, 1.0, 0.5),
                                  contradict_fn=lambda caption: True)
  assert weighted["reward"] == pytest.approx(2.0 * 2 / 3 + 1.0 * 0.5 - 0.5, abs=1e-12)


def test_content_reward_counts_each_element_once_per_aspect():
  calls = []

  def judge(element, caption):
    calls.append(element)
    return True

  out = reade.content_reward(PREDICTED, REFERENCE, judge, contradict_fn=lambda caption: False)
  assert sorted(calls) == sorted(REFERENCE["user"] + REFERENCE["detail"] + REFERENCE["supp"])
  assert out["reward"] == pytest.approx(1.0 + 1.0 + 0.8, abs=1e-12)


def test_content_reward_empty_aspect_scores_one():
  out = reade.content_reward(PREDICTED, {**REFERENCE, "detail": []}, substring_match, contradict_fn=lambda c: False)
  assert out["detail"] == 1.0


def test_key_info_elements_flatten_table9_form():
  info = {"objects": [{"name": "woman", "attributes": ["sits", "long blonde hair"]}, {"name": "laptop",
                                                                                      "attributes": []}],
          "actions": ["picks up smartphone"], "camera": ["fixed"], "style": ["clean", "professional"]}
  assert reade.key_info_elements(info) == ("woman", "woman: sits", "woman: long blonde hair", "laptop",
                                           "picks up smartphone", "fixed", "clean", "professional")
  ref = reade.CaptionReference.from_json({"user": info, "detail": ["wide shot"], "supp": []})
  assert len(ref.user) == 8 and ref.detail == ("wide shot",) and ref.supp == ()
  with pytest.raises(ValueError, match="keys among"):
    reade.key_info_elements({**info, "lighting": ["soft"]})
  with pytest.raises(ValueError, match="object must be"):
    reade.key_info_elements({"objects": ["woman"]})


def test_content_reward_errors():
  ok = {"contradict_fn": lambda caption: False}
  with pytest.raises(ValueError, match="exactly the keys"):
    reade.content_reward(PREDICTED, {"user": ["a"], "detail": []}, substring_match, **ok)
  with pytest.raises(ValueError, match="match_fn must return a bool"):
    reade.content_reward(PREDICTED, REFERENCE, lambda element, caption: "yes", **ok)
  with pytest.raises(ValueError, match="contradict_fn must return a bool"):
    reade.content_reward(PREDICTED, REFERENCE, substring_match, contradict_fn=lambda caption: 0.3)
  with pytest.raises(ValueError, match="four numbers"):
    reade.content_reward(PREDICTED, REFERENCE, substring_match, (1.0, 1.0, 0.8), **ok)
  with pytest.raises(ValueError, match="non-empty strings"):
    reade.CaptionReference(user=("a", ""), detail=(), supp=())
  with pytest.raises(TypeError, match="contradict_fn"):
    reade.content_reward(PREDICTED, REFERENCE, substring_match)
  assert reade.content_reward(PREDICTED, REFERENCE, lambda e, c: np.bool_(True), **ok)["user"] == 1.0


# --- Registry -----------------------------------------------------------------------------------------------

@pytest.fixture
def clean_registry():
  before = set(rewards.reward_names())
  yield
  for name in set(rewards.reward_names()) - before:
    rewards.unregister_reward(name)


def test_builtins_are_registered():
  expected = {"tempact_judge": tempact.judge_reward, "tempact_video": tempact.video_reward,
              "tempact_plan": tempact.plan_reward, "tempact_step": tempact.step_reward,
              "tempact_exec": tempact.exec_reward, "reade_format": reade.format_reward,
              "reade_content": reade.content_reward, "world_video": world_rewards.video_reward,
              "world_plan": world_rewards.plan_reward}
  assert set(expected) <= set(rewards.reward_names())
  assert rewards.reward_names() == tuple(sorted(rewards.reward_names()))
  for name, fn in expected.items():
    assert rewards.get_reward(name) is fn
  assert rewards.get_reward("tempact_step")(STEP_JUDGE) == pytest.approx(0.605)


def test_register_and_decorator(clean_registry):
  def length_reward(text):
    return min(1.0, len(text) / 100)

  assert rewards.register_reward("test_length", length_reward) is length_reward
  assert rewards.get_reward("test_length")("x" * 50) == 0.5

  @rewards.register_reward("test_constant")
  def constant(text):
    return 0.25

  assert rewards.get_reward("test_constant") is constant and constant("a") == 0.25
  assert {"test_length", "test_constant"} <= set(rewards.reward_names())


def test_duplicate_and_overwrite(clean_registry):
  rewards.register_reward("test_dup", lambda x: 0.0)
  with pytest.raises(ValueError, match="'test_dup' is already registered.*overwrite=True"):
    rewards.register_reward("test_dup", lambda x: 1.0)
  with pytest.raises(ValueError, match="already registered"):
    rewards.register_reward("tempact_judge", lambda x: 1.0)
  assert rewards.get_reward("tempact_judge") is tempact.judge_reward
  replacement = rewards.register_reward("test_dup", lambda x: 1.0, overwrite=True)
  assert rewards.get_reward("test_dup") is replacement and replacement(None) == 1.0


def test_unknown_and_bad_registrations(clean_registry):
  with pytest.raises(ValueError, match=r"unknown reward 'nope'; registered: \[.*'reade_format'.*'world_plan'"):
    rewards.get_reward("nope")
  with pytest.raises(ValueError, match="unknown reward"):
    rewards.unregister_reward("nope")
  with pytest.raises(ValueError, match="non-empty string"):
    rewards.register_reward("", lambda x: 0.0)
  with pytest.raises(ValueError, match="callable"):
    rewards.register_reward("test_value", 0.5)
  rewards.register_reward("test_gone", math.sqrt)
  assert rewards.unregister_reward("test_gone") is math.sqrt
  assert "test_gone" not in rewards.reward_names()
