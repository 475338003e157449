"""Concurrent conversations' decode steps as one backbone call: batching changes speed, never answers.
Each conversation is held to the same conversation run alone (ids equal, logits within float tolerance)
while others join and leave the batch at other steps, are cancelled, or wait for a row."""

import json
import threading
import time

import numpy as np
import pytest

from conftest import cli, shared_dir
from covo_edge.runtime import Cancel, Debug, Model, gpus
from covo_edge.runtime import assistant as assistant_module
from covo_edge.runtime.batching import DecodeBatch
from covo_edge.runtime.synthetic import interleaved_reply, synthetic_utterance

CODES = 151671


def forced(n: int, seed: int) -> np.ndarray:
    return interleaved_reply(n, CODES, 16384, seed)


def question(n: int) -> np.ndarray:
    return synthetic_utterance(1.0 + 0.4 * n, 16000, seed=n)


def turn(conversation, q, ids, **kwargs):
    dump = {}
    r = conversation.reply(q, 16000, seed=1, debug=Debug(force_tokens=ids, dump=dump, step_logits="all"), **kwargs)
    return r.tokens, dump["step_logits"]


def same(a, b, rel=1e-4):
    assert np.array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=rel * np.abs(b[1]).max())


def run_threads(targets, timeout=600):
    errors = []

    def guard(f):
        try:
            f()
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(f,)) for f in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)


# Three conversations with different histories (0, 1 and 2 earlier turns), then two turns each run at once:
# reply lengths differ (they leave at different steps) and each starts when the one before has decoded a few
# steps (they join at different steps).
HISTORY = [[], [(question(3), forced(9, 30))], [(question(4), forced(14, 40)), (question(5), forced(6, 41))]]
TURNS = [[(question(n), forced(30 + 13 * n, n)), (question(n + 6), forced(18 + 5 * n, n + 6))] for n in range(3)]


def alone(tiny_art):
    model = Model.load(tiny_art, mode="text")
    out = []
    for n in range(3):
        c = model.conversation()
        for q, ids in HISTORY[n]:
            turn(c, q, ids)
        out.append([turn(c, q, ids) for q, ids in TURNS[n]])
    return out


@pytest.fixture(scope="module")
def solo(tiny_art):
    return alone(tiny_art)


def test_three_conversations_joining_and_leaving_at_different_steps_answer_as_alone(tiny_art, solo):
    model = Model.load(tiny_art, mode="text", max_batch=4)
    conversations = [model.conversation() for _ in range(3)]
    for c, history in zip(conversations, HISTORY):
        for q, ids in history:
            turn(c, q, ids)
    started = [threading.Event() for _ in range(3)]
    started[0].set()
    all_in = threading.Event()  # the third has decoded a few steps: the first two wait for it there
    got = [[], [], []]

    def run(n):
        started[n].wait(timeout=300)
        c = conversations[n]
        for k, (q, ids) in enumerate(TURNS[n]):
            dump = {}
            for i, _ in enumerate(c.stream(q, 16000, seed=1, debug=Debug(force_tokens=ids, dump=dump,
                                                                            step_logits="all"))):
                if k == 0 and i == 2:
                    if n < 2:
                        started[n + 1].set()  # the next conversation starts while this one decodes
                        all_in.wait(timeout=300)
                    else:
                        all_in.set()
            got[n].append((c.last_reply.tokens, dump["step_logits"]))
            started[min(n + 1, 2)].set()

    run_threads([lambda n=n: run(n) for n in range(3)])
    for n in range(3):
        for k in range(2):
            same(got[n][k], solo[n][k])
    steps = model.batch.stats.steps_per_call
    assert steps[2] > 0 and steps[3] > 0, steps  # they did decode together, two and three at a time
    fed = sum(len(ids) - 1 for t in TURNS + HISTORY for _, ids in t)  # every id but a turn's last is fed
    assert sum(k * v for k, v in steps.items()) == fed
    assert model.batch.members == 0  # every turn left the batch when it ended


def test_a_full_batch_queues_the_next_conversation(tiny_art, solo):
    """max_batch 2, three conversations at once: never more than two rows a call, the third waits for a
    row, every answer as alone."""
    model = Model.load(tiny_art, mode="text", max_batch=2)
    got = [None] * 3

    def run(n):
        c = model.conversation()
        for q, ids in HISTORY[n]:
            turn(c, q, ids)
        got[n] = [turn(c, q, ids) for q, ids in TURNS[n]]

    run_threads([lambda n=n: run(n) for n in range(3)])
    for n in range(3):
        for k in range(2):
            same(got[n][k], solo[n][k])
    assert max(model.batch.stats.steps_per_call) <= 2 and model.batch.stats.calls > 0


def test_a_cancelled_conversation_leaves_the_batch_at_once(tiny_art, solo):
    """One conversation is cancelled mid-reply while another decodes: the cancelled one is out of the batch
    as soon as its stream ends, the other's answer is as alone, and the cancelled one's next turn equals that
    of a conversation fed the ids it kept."""
    model = Model.load(tiny_art, mode="text", max_batch=4)
    keeper, quitter = model.conversation(), model.conversation()
    going = threading.Event()
    after = {}
    got = {}

    def keep():
        dump = {}
        q, ids = TURNS[0][0]
        for i, _ in enumerate(keeper.stream(q, 16000, seed=1, debug=Debug(force_tokens=ids, dump=dump,
                                                                           step_logits="all"))):
            if i == 1:
                going.set()
        got["keeper"] = (keeper.last_reply.tokens, dump["step_logits"])

    def quit_early():
        going.wait(timeout=300)
        cancel = Cancel()
        ids = forced(200, 9)
        for i, _ in enumerate(quitter.stream(question(8), 16000, seed=1, cancel=cancel,
                                             debug=Debug(force_tokens=ids))):
            if i == 2:
                cancel.set()
        after["in_batch"] = quitter in model.batch
        after["tokens"] = quitter.last_reply.tokens

    run_threads([keep, quit_early])
    same(got["keeper"], solo[0][0])
    assert not after["in_batch"] and len(after["tokens"]) < 200
    assert quitter.last_reply.finish_reason == "cancelled"
    fresh = Model.load(tiny_art, mode="text").conversation()
    fresh.reply(question(8), 16000, seed=1, debug=Debug(force_tokens=after["tokens"]))
    assert quitter.context_length == fresh.context_length
    same(turn(quitter, question(9), forced(12, 10)), turn(fresh, question(9), forced(12, 10)))


def test_long_prompts_are_prefilled_in_chunks_with_the_same_answer(tiny_art, solo, monkeypatch):
    """In a batching model a prompt runs in chunks (here 16 positions) so a batch step never waits behind a
    whole long prompt: same answers as one prefill call."""
    monkeypatch.setattr(assistant_module, "PREFILL_CHUNK", 16)
    model = Model.load(tiny_art, mode="text", max_batch=2)
    c = model.conversation()
    for q, ids in HISTORY[2]:
        turn(c, q, ids)
    for k in range(2):
        same(turn(c, *TURNS[2][k]), solo[2][k])


def test_a_long_prompt_holds_a_decoding_conversation_for_one_chunk_at_a_time(tiny_art, monkeypatch):
    """One conversation decodes while another's long prompt is prefilled in chunks of 8 positions: graph calls
    run in the order they were asked for, so each call of the decoding conversation that asks while a chunk
    runs waits for that chunk only, never for the next ones."""
    monkeypatch.setattr(assistant_module, "PREFILL_CHUNK", 8)
    model = Model.load(tiny_art, mode="text", max_batch=2)
    ended, waits, asking = [], [], threading.local()  # chunks as they finish; chunks each decoding call waited out
    inner, outer = model.backend.inner.run, model.backend.run

    def ran(graph, feeds, host=()):
        chunk = graph == "backbone" and feeds["inputs_embeds"].shape[1] > 1
        if getattr(asking, "decoding", False):
            waits.append(len(ended) - asking.since)
        if chunk:
            time.sleep(0.05)  # a chunk of the 7B takes far longer than a tiny step: the decode asks meanwhile
        out = inner(graph, feeds, host)
        if chunk:
            ended.append(graph)
        return out

    def asked(graph, feeds, host=()):
        asking.since = len(ended)
        return outer(graph, feeds, host)

    model.backend.inner.run, model.backend.run = ran, asked
    decoding, prompt_done = threading.Event(), threading.Event()

    def decode():
        for i, _ in enumerate(model.conversation().stream(question(0), 16000, debug=Debug(force_tokens=forced(400, 2)))):
            if i == 2:
                asking.decoding = True
                decoding.set()
            if prompt_done.is_set():
                break

    def prefill():
        decoding.wait(timeout=300)
        model.conversation().reply(synthetic_utterance(12.0, 16000, seed=3), 16000, debug=Debug(force_tokens=forced(2, 3)))
        prompt_done.set()

    run_threads([decode, prefill])
    assert len(ended) >= 4  # the prompt ran in chunks, the decode went on meanwhile
    assert max(waits) == 1 and sum(waits) >= 2, waits  # calls did wait behind a chunk, never behind two


def toy_feed(embeds, mask, positions, past):
    """A stand-in backbone whose answer depends on exactly what a row may see: logits = the sum of the row's
    unmasked cached values (each value = its embedding times its position + 1) plus its new one."""
    value = embeds[:, 0] * (positions + 1)
    present = np.concatenate([past[0], value[:, None, None, :]], 2) if past else value[:, None, None, :]
    seen = (present[:, 0] * mask[:, :, None]).sum(1)
    return seen, [present]


def toy_alone(history: np.ndarray, steps: np.ndarray) -> list[np.ndarray]:
    """What toy_feed answers for one conversation alone (its cached values `history`): its own values summed,
    step by step."""
    total = history.sum(0)
    out = []
    for i, e in enumerate(steps):
        total = total + e * (len(history) + i + 1)
        out.append(total.copy())
    return out


def test_rows_see_only_their_own_history_through_joins_leaves_idle_rows_and_packing():
    """The batch's bookkeeping, on a stand-in backbone, one step per call (so the other rows ride along idle
    and leave holes): rows join with histories of different lengths (the batch pads the shorter), one leaves
    mid-way, and the holes run the batch into its small context so it packs the rows again; every answer and
    every cache handed back is exactly what the conversation alone gives."""
    rng = np.random.default_rng(0)
    batch = DecodeBatch(toy_feed, np.asarray, max_batch=3, max_context=24, linger_s=0.0)
    lengths, starts, counts = {"a": 5, "b": 9, "c": 2}, {"a": 0, "b": 2, "c": 4}, {"a": 14, "b": 6, "c": 10}
    values = {k: rng.standard_normal((n, 4)) * (np.arange(n) + 1)[:, None] for k, n in lengths.items()}
    steps = {k: rng.standard_normal((n, 4)) for k, n in counts.items()}
    answers = {k: [] for k in steps}
    for i in range(14):
        for k in ("a", "b", "c"):
            if i == starts[k]:
                batch.join(k, [values[k][None, None]], lengths[k])
            if k in batch and i - starts[k] < counts[k]:
                answers[k].append(batch.step(k, steps[k][i - starts[k]][None, None]))
        if i == 7:
            past, length = batch.leave("b")
            assert length == 9 + 6 and past[0].shape == (1, 1, 15, 4)
            np.testing.assert_array_equal(past[0][0, 0], np.concatenate(
                [values["b"], steps["b"] * (9 + np.arange(6) + 1)[:, None]]))
    assert batch.stats.packs > 0 and batch.stats.rows > batch.stats.active_rows == sum(counts.values())
    for k in ("a", "c"):
        past, length = batch.leave(k)
        assert length == lengths[k] + counts[k]
        np.testing.assert_allclose(past[0][0, 0, lengths[k]:], steps[k] * (lengths[k] + np.arange(counts[k]) + 1)[:, None])
    assert batch.members == 0
    for k in answers:
        np.testing.assert_allclose(np.array(answers[k]), toy_alone(values[k], steps[k]))


def test_bench_batch_reports_each_count_beside_one_at_a_time(tiny_art, tmp_path, capsys):
    """The JSON other tools read: per count of conversations its throughput, step latency and first audio,
    the serial run beside it; two at once did share backbone calls."""
    out = tmp_path / "bb.json"
    rc, printed, err = cli(capsys, "bench-batch", tiny_art, "--sessions", "1", "2", "--new-tokens", "60",
                           "--json", out)
    assert rc == 0, err
    result = json.loads(out.read_text())
    assert json.loads(printed) == result and "step p50 ms" in err
    assert set(result["sessions"]) == {"1", "2"}
    keys = {"aggregate_tokens_per_s", "step_ms_p50", "step_ms_p95", "first_audio_s_p50"}
    for row in (*result["sessions"].values(), result["serial"]):
        assert keys <= set(row) and all(row[k] > 0 for k in keys)
    assert result["sessions"]["2"]["steps_per_call"].get("2", 0) > 0  # the two decoded together
    assert result["serial"]["steps_per_call"] == {"1": 2 * 59}  # one at a time: 59 fed steps each
    assert {d["device"] for d in result["gpu_projection_7b"]["devices"]} == {"RTX 4090", "L40S", "H100 SXM 80GB",
                                                                            "Jetson AGX Orin 64GB"}
    chunks = result["token2wav_chunk_batching"]
    assert chunks["two_over_one"] == pytest.approx(chunks["two_streams_ms"] / chunks["one_stream_ms"])


def test_the_7b_decode_numbers_are_the_released_state_dicts():
    """The projection's constants: the weights a decode step reads (every LLM weight but the embedding table)
    and the cache per token, from the released model's state-dict manifest."""
    d = shared_dir()
    if d is None:
        pytest.skip("needs ../shared (the released state-dict manifest)")
    keys = json.loads((d / "reference" / "covo_audio_state_dict_manifest.json").read_text())["covo_audio"]["keys"]
    llm = [k for k in keys if k["key"].startswith("llm.")]
    assert sum(k["numel"] for k in llm if "embed_tokens" not in k["key"]) == gpus.DECODE_WEIGHTS_7B
    layers = {int(k["key"].split(".")[3]) for k in llm if ".layers." in k["key"]}
    k_proj = next(k for k in llm if k["key"].endswith("layers.0.self_attn.k_proj.weight"))
    assert len(layers) == gpus.LAYERS_7B and gpus.KV_VALUES_PER_TOKEN_7B == len(layers) * 2 * k_proj["shape"][0]
