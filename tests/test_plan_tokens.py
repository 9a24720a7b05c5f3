"""The Plan-X token layout (DESIGN.md decision 1): Tar's ids, code <-> id maps and their errors."""

import numpy as np
import pytest

from planx_jax.plan_tokens import CODES_PER_SCALE, PlanTokens


def test_qwen_tar_layout():
  layout = PlanTokens()
  assert (layout.im_start, layout.im_end) == (151665, 151666)
  assert [layout.scale_token(s) for s in range(3)] == [151667, 151668, 151669]
  assert (layout.code_offset, layout.vocab_size) == (151670, 217206)
  assert (layout.chat_im_start, layout.chat_im_end, layout.endoftext) == (151644, 151645, 151643)
  assert CODES_PER_SCALE == (729, 169, 81)
  strings = layout.token_strings()
  assert strings[:6] == ["<im_start>", "<im_end>", "<S0>", "<S1>", "<S2>", "<I0>"] and strings[-1] == "<I65535>"
  assert len(strings) == layout.vocab_size - layout.text_vocab_size


def test_code_id_round_trip_on_arrays():
  layout = PlanTokens(text_vocab_size=100, codebook_size=16, chat_im_start=1, chat_im_end=2, endoftext=0)
  codes = np.arange(16).reshape(4, 4)
  ids = layout.code_to_id(codes)
  assert ids.min() == 105 and ids.max() == 120
  np.testing.assert_array_equal(layout.id_to_code(ids), codes)
  assert layout.is_code(np.array([104, 105, 120, 121])).tolist() == [False, True, True, False]
  assert layout.code_to_id(3) == 108


@pytest.mark.parametrize("call, message", [
    (lambda t: t.code_to_id(np.array([0, 16])), r"code 16 outside the codebook \(0..15\)"),
    (lambda t: t.code_to_id(-1), r"code -1 outside the codebook"),
    (lambda t: t.id_to_code(np.array([105, 104])), r"token id 104 is not a code token \(<I\*> ids are 105..120\)"),
    (lambda t: t.scale_token(3), "TA-Tok scale must be 0, 1 or 2, got 3"),
])
def test_errors_name_the_value(call, message):
  layout = PlanTokens(text_vocab_size=100, codebook_size=16, chat_im_start=1, chat_im_end=2, endoftext=0)
  with pytest.raises(ValueError, match=message):
    call(layout)


def test_invalid_layouts():
  with pytest.raises(ValueError, match="chat_im_end=100 is not a text token id"):
    PlanTokens(text_vocab_size=100, codebook_size=4, chat_im_start=1, chat_im_end=100, endoftext=0)
  with pytest.raises(ValueError, match="codebook_size must be >= 1"):
    PlanTokens(codebook_size=0)
  with pytest.raises(ValueError, match="unknown PlanTokens config key 'codebook'"):
    PlanTokens.from_dict({"codebook": 3})
  assert PlanTokens.from_dict(PlanTokens().to_dict()) == PlanTokens()
