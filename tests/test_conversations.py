"""One loaded model, many conversations; cancel and truncate. Every conversation is held to a conversation
of its own (ids equal, logits within float tolerance): sharing a model, running beside others on threads,
being cancelled or truncated changes nothing but what the issue says it changes."""

import threading

import numpy as np
import pytest

from conftest import needs
from covo_edge.runtime import Assistant, Cancel, Debug, InputError, Model
from covo_edge.runtime.assistant import audio_alignment
from covo_edge.runtime.synthetic import interleaved_reply, synthetic_utterance

needs("torch", "export")  # the artifacts are exported with torch

CODES, STOP = 151671, 151645


def forced(n: int, seed: int) -> np.ndarray:
    return interleaved_reply(n, CODES, 16384, seed)


def question(n: int) -> np.ndarray:
    return synthetic_utterance(1.0 + 0.5 * n, 16000, seed=n)


def turns(conversation, plan, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run (question, forced ids) turns; each turn's tokens and step logits."""
    out = []
    for q, ids in plan:
        dump = {}
        r = conversation.reply(q, 16000, seed=1, debug=Debug(force_tokens=ids, dump=dump, step_logits="all"), **kwargs)
        out.append((r.tokens, dump["step_logits"]))
    return out


def same(a, b, rel=1e-4):
    for (ta, la), (tb, lb) in zip(a, b, strict=True):
        assert np.array_equal(ta, tb)
        np.testing.assert_allclose(la, lb, atol=rel * np.abs(lb).max())


@pytest.fixture(scope="module")
def model(tiny_art):
    return Model.load(tiny_art, mode="text")


def test_alignment_of_a_known_reply():
    """Code j's audio ends at 240 * (4j + 1) samples; a text id is heard with the next code; trailing text and
    the stop id with the last sample."""
    tokens = np.array([1, 2, CODES, CODES + 9, 3, CODES + 1, 4, STOP])
    assert audio_alignment(tokens, CODES, 960, 720).tolist() == [240, 240, 240, 1200, 2160, 2160, 2160, 2160]
    assert audio_alignment(np.array([1, 2]), CODES, 960, 720).tolist() == [0, 0]


def test_conversations_on_one_model_equal_conversations_alone(model, tiny_art):
    """Two conversations interleaved turn by turn on one model give what each gives on a model of its own."""
    plans = [[(question(n + k), forced(12, 10 * n + k)) for k in range(2)] for n in range(2)]
    alone = [turns(Assistant.load(tiny_art, mode="text"), plan) for plan in plans]
    a, b = model.conversation(), model.conversation()
    got = [[], []]
    for k in range(2):
        for n, c in enumerate((a, b)):
            got[n] += turns(c, [plans[n][k]])
    for n in range(2):
        same(got[n], alone[n])


def test_conversations_on_threads_do_not_disturb_each_other(model):
    """Three conversations run at once from three threads; each equals the same conversation run alone, and
    the model's serialized calls say how long they queued."""
    plans = [[(question(n + k), forced(10, 7 * n + k)) for k in range(2)] for n in range(3)]
    alone = [turns(model.conversation(), plan) for plan in plans]
    results, errors = [None] * 3, []

    def run(n):
        try:
            results[n] = turns(model.conversation(), plans[n])
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    waited = model.backend.waited
    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    for n in range(3):
        same(results[n], alone[n])
    assert model.backend.waited > waited  # they did run at once, one graph call at a time


def test_closing_the_stream_cancels_and_the_next_turn_continues_from_the_cut(tiny_art):
    """A turn whose stream is closed after some chunks ends `cancelled` within a step; the next turn equals
    that of a conversation that was fed the same ids (the cut reply's tokens, the last one unfed as in every
    finished turn)."""
    a = Assistant.load(tiny_art)
    ids = forced(60, 3)
    stream = a.stream(question(0), 16000, seed=2, debug=Debug(force_tokens=ids))
    for n, _ in enumerate(stream):
        if n == 12:
            break
    stream.close()
    reply = a.last_reply
    assert reply.finish_reason == "cancelled" and 0 < len(reply.tokens) < len(ids) and a.turns == 1
    np.testing.assert_array_equal(reply.tokens, ids[: len(reply.tokens)])
    fresh = Assistant.load(tiny_art)
    fresh.reply(question(0), 16000, seed=2, debug=Debug(force_tokens=reply.tokens))
    assert a.context_length == fresh.context_length
    plan = [(question(1), forced(16, 4))]
    same(turns(a, plan), turns(fresh, plan))


def test_a_cancel_set_from_another_thread_ends_the_turn(model):
    """`Cancel` set while the turn decodes: the reply ends `cancelled` well before its limit."""
    c = model.conversation()
    cancel = Cancel()
    chunks = []
    for chunk in c.stream(question(0), 16000, max_new_tokens=400, cancel=cancel,
                          debug=Debug(force_tokens=forced(400, 1))):
        chunks.append(chunk)
        if len(chunks) == 5:
            threading.Thread(target=cancel.set).start()
    reply = chunks[-1].reply
    assert reply.finish_reason == "cancelled" and len(reply.tokens) < 400


def test_truncate_keeps_what_was_heard_and_the_next_turn_continues_from_there(tiny_art):
    """truncate(ms) keeps the ids up to the last code whose audio lies within the first ms (text before it
    included), rolls the cache back there and returns that transcript; the next turn equals that of a
    conversation fed exactly those ids (then the stop id, which is never fed)."""
    a = Assistant.load(tiny_art)
    ids = forced(60, 5)
    reply = a.reply(question(0), 16000, seed=2, debug=Debug(force_tokens=ids))
    codes = np.flatnonzero(ids >= CODES)
    heard_ms = (240 * (4 * 20 + 1)) / 24  # exactly the end of the 21st code's audio
    kept = ids[: codes[20] + 1]
    transcript = a.truncate(heard_ms)
    assert len(reply.audio) > 24 * heard_ms
    text_ids = kept[kept < CODES]
    assert transcript == a.model.tokenizer.decode(text_ids.tolist(), skip_special_tokens=True)
    fresh = Assistant.load(tiny_art)
    fresh.reply(question(0), 16000, seed=2, debug=Debug(force_tokens=np.append(kept, STOP)))
    assert a.context_length == fresh.context_length
    plan = [(question(1), forced(16, 6))]
    same(turns(a, plan), turns(fresh, plan))


def test_truncate_refuses_what_it_cannot_do(tiny_art):
    a = Assistant.load(tiny_art)
    with pytest.raises(InputError, match="no reply to truncate"):
        a.truncate(100)
    reply = a.reply(question(0), 16000, debug=Debug(force_tokens=forced(30, 1)))
    held = a.context_length
    with pytest.raises(InputError, match="audio_ms must be between 0 and the reply's"):
        a.truncate(1000 * len(reply.audio) / 24000 + 50)
    with pytest.raises(InputError, match="audio_ms must be between 0"):
        a.truncate(-1)
    assert a.context_length == held


def test_a_second_truncate_cuts_what_the_first_kept(tiny_art):
    """truncate twice: the second cuts further back (as if heard less); more than the first kept is refused."""
    a = Assistant.load(tiny_art)
    ids = forced(60, 5)
    a.reply(question(0), 16000, seed=2, debug=Debug(force_tokens=ids))
    start = a.context_length - len(ids) + 1  # the last id is never fed
    codes = np.flatnonzero(ids >= CODES)
    a.truncate((240 * (4 * 20 + 1)) / 24)
    assert a.context_length == start + codes[20] + 1
    with pytest.raises(InputError, match="audio_ms must be between 0 and the reply's"):
        a.truncate((240 * (4 * 25 + 1)) / 24)
    a.truncate((240 * (4 * 10 + 1)) / 24)
    assert a.context_length == start + codes[10] + 1
    assert len(a.last_reply.tokens) == codes[10] + 1


def test_a_text_reply_from_a_speech_model_speaks_nothing(tiny_art):
    """speak=False: the same ids as the spoken turn, no audio computed."""
    ids = forced(40, 8)
    spoken = Assistant.load(tiny_art).reply(question(0), 16000, debug=Debug(force_tokens=ids))
    silent = Assistant.load(tiny_art).reply(question(0), 16000, speak=False, debug=Debug(force_tokens=ids))
    assert spoken.audio is not None and silent.audio is None
    assert silent.text == spoken.text and np.array_equal(silent.tokens, spoken.tokens)
