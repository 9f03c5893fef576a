"""The quiet bound (firmware/dsp/quiet.py): it must never say "quiet" where a detector's
gate could open, and it must say so on an idle line, or the analyser saves nothing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from firmware.dsp.analyser import LineAnalyser
from firmware.dsp.cid_messages import CallerIdMessage
from firmware.dsp.dtmf import DtmfDetector, DtmfEvent
from firmware.dsp.fsk import BELL202, CallerIdDecoder, FskDemodulator
from firmware.dsp.highpass import HumFilter
from firmware.dsp.quiet import QuietBound, blocks_met
from tests.cid_signals import at_level, missing_tools, to_int16
from tests.dtmf_signals import SOX, dial
from tests.test_caller_id import MESSAGES, burst


def span_energies(x: npt.NDArray[np.float64], span: int) -> npt.NDArray[np.float64]:
    """Brute force: the energy of the ``span`` samples ending at each sample of ``x``
    (fewer at the start)."""
    c = np.concatenate(([0.0], np.cumsum(x * x)))
    ends = np.arange(1, x.size + 1)
    return c[ends] - c[np.maximum(ends - span, 0)]


BLOCK = 40  # the analyser's: 5 ms at 8 kHz


def quiet_said(seed: int) -> dict[str, list[float]]:
    """One random line through the bound, checked against the oracle (:func:`oracle`)."""
    rate = 8000
    rng = np.random.default_rng(seed)
    dtmf, fsk = DtmfDetector(rate).gate_limit, CallerIdDecoder(rate).hunt_limit
    seconds = 6
    t = np.arange(seconds * rate) / rate
    line = rng.normal(0.0, 1.0, t.size) * np.repeat(rng.uniform(1, 50, 4 * seconds), rate // 4)
    for n in range(24):
        limit = (dtmf, fsk)[n % 2]
        power = limit.energy / limit.span * 10 ** rng.uniform(-0.7, 0.3)  # a tone's A^2 / 2
        at, length = int(rng.integers(0, t.size)), int(rng.integers(20, 1500))
        tone = np.sqrt(2 * power) * np.sin(2 * np.pi * rng.uniform(500, 3500) * t)
        line[at : at + length] += tone[at : at + length]
    return oracle(np.rint(line).astype(np.int16))


def oracle(raw: npt.NDArray[np.int16]) -> dict[str, list[float]]:
    """``raw`` through the bound, checked against the filtered line and FSK's own DC-free
    input (its demodulator) over the whole stream. Wherever the bound says a batch is
    quiet for a detector, no span ending in that batch may reach that detector's gate
    energy. Returns, per detector, the loudest span of each batch said quiet, as a share
    of the gate."""
    rate = 8000
    dtmf, fsk = DtmfDetector(rate).gate_limit, CallerIdDecoder(rate).hunt_limit
    hum = HumFilter(rate)
    bound = QuietBound(dtmf, fsk, hum.taps, block=BLOCK)
    filtered = hum.filter(raw)
    dc_free, _ = FskDemodulator(rate).dc_and_power(filtered)
    truths = {"dtmf": span_energies(filtered, dtmf.span), "fsk": span_energies(dc_free, fsk.span)}
    limits = {"dtmf": dtmf, "fsk": fsk}
    said: dict[str, list[float]] = {"dtmf": [], "fsk": []}
    for s in range(0, raw.size, 800):
        heard = dict(zip(("dtmf", "fsk"), bound.audible(raw[s : s + 800]), strict=True))
        for name, truth in truths.items():
            if not heard[name]:
                share = float(truth[s : s + 800].max() / limits[name].energy)
                assert share < 1.0, (name, s, share)
                said[name].append(share)
    return said


@pytest.mark.parametrize("seed", range(16))
def test_quiet_is_only_said_where_no_detector_gate_could_open(seed: int) -> None:
    """Noise from near silence to -56 dBFS, and tones switched on and off anywhere at
    levels around each gate, make both answers common."""
    said = quiet_said(seed)
    assert all(len(shares) > 2 for shares in said.values()), said


def test_quiet_is_said_close_to_the_gates() -> None:
    """Over the seeds above, "quiet" is still said where the loudest span is half a gate
    or more: the bound is tight (the spans' extension by the filter's and the DC
    removal's memory is its only slack), so a planted slack shows up above."""
    closest = {"dtmf": 0.0, "fsk": 0.0}
    for seed in range(16):
        for name, shares in quiet_said(seed).items():
            closest[name] = max(closest[name], *shares)
    assert all(share > 0.5 for share in closest.values()), closest


@pytest.mark.parametrize(("span", "block"), [(166, 40), (359, 40), (518, 40), (40, 40), (41, 40)])
def test_blocks_met_is_the_most_blocks_a_span_overlaps(span: int, block: int) -> None:
    most = max(len({i // block for i in range(at, at + span)}) for at in range(2 * block))
    assert blocks_met(span, block) == most


@pytest.mark.parametrize("detector", ["dtmf", "fsk"])
def test_spike_trains_the_coarse_tests_worst_case_stay_bounded(detector: str) -> None:
    """The block test's worst case: spikes, one per 5 ms block, placed so that one span
    meets as many blocks as it can, each holding a block's whole energy. From well under
    to well over the level where the block test turns, it never says quiet over a gate,
    and the bound still says quiet within a factor of about two of the gate (the filter
    spreads each spike, so the detectors' spans hold less than the raw spans)."""
    rate = 8000
    limit = (DtmfDetector(rate).gate_limit, CallerIdDecoder(rate).hunt_limit)[detector == "fsk"]
    blocks = 6 * rate // BLOCK
    spikes = np.zeros(blocks * BLOCK)
    # Last sample of even blocks, first of odd ones: a span from one's end meets the most.
    spikes[np.arange(blocks) * BLOCK + np.where(np.arange(blocks) % 2 == 0, BLOCK - 1, 0)] = 1
    closest = 0.0
    for scale in np.linspace(0.5, 3.0, 26):
        met = blocks_met(limit.span + 64, BLOCK)
        amplitude = np.sqrt(scale * limit.energy / met)
        said = oracle(np.rint(spikes * min(amplitude, 32767)).astype(np.int16))
        closest = max(closest, *said[detector], 0.0)
    assert closest > 0.45, closest


def test_the_bound_is_tight_enough_for_an_idle_line_to_be_quiet() -> None:
    """Line noise at -58 dBFS (the speech sample's pauses): neither detector can react,
    and the bound says so. With hum or at -40 dBFS it cannot tell (nothing is skipped)."""
    rate = 8000
    t = np.arange(2 * rate) / rate
    rng = np.random.default_rng(7)
    dtmf, fsk = DtmfDetector(rate), CallerIdDecoder(rate)
    for rms, hum_level, quiet in ((40.0, 0.0, True), (330.0, 0.0, False), (40.0, 300.0, False)):
        bound = QuietBound(dtmf.gate_limit, fsk.hunt_limit, HumFilter(rate).taps, block=BLOCK)
        line = rng.normal(0.0, rms, t.size) + hum_level * np.sin(2 * np.pi * 50 * t)
        raw = np.rint(line).astype(np.int16)
        said = {bound.audible(batch) for batch in raw.reshape(20, -1)}
        assert said == {(not quiet, not quiet)}, (rms, hum_level, said)


def test_an_idle_line_is_not_shown_to_the_detectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The analyser's point: on line noise it spends (nearly) nothing on DTMF and FSK.
    A planted fault (the gate ignored) shows up here as the detectors being called."""
    rate = 8000
    line = LineAnalyser(rate)
    calls: list[int] = []
    real_dtmf = line.dtmf.process

    def counted(
        block: npt.NDArray[np.int16] | npt.NDArray[np.float64], start: int
    ) -> list[DtmfEvent]:
        calls.append(start)
        return real_dtmf(block, start)

    monkeypatch.setattr(line.dtmf, "process", counted)
    assert line.fsk is not None
    real_fsk = line.fsk.process

    def counted_fsk(block: npt.NDArray[np.float64], start: int) -> list[CallerIdMessage]:
        calls.append(start)
        return real_fsk(block, start)

    monkeypatch.setattr(line.fsk, "process", counted_fsk)
    noise = np.rint(np.random.default_rng(3).normal(0.0, 40.0, 10 * rate)).astype(np.int16)
    for start in range(0, noise.size, 800):
        line.process(noise[start : start + 800], start)
    line.catch_up()
    assert line.caller_id_before(noise.size, window_frames=noise.size) is None
    assert calls == []
    assert line.settled_frame == noise.size  # masking may write everything heard
    assert line.levels is not None and line.levels["rms_dbfs"] == pytest.approx(-58.3, abs=0.5)


@pytest.mark.skipif(bool(missing_tools()) or SOX is None, reason="sox and minimodem are needed")
def test_what_the_analyser_hears_is_what_ungated_detectors_hear() -> None:
    """Digits (down to -40 dBm0, the weakest in spec, and 40 ms ones) and caller IDs
    (down to -48 dBFS, 2 dB over the decoder's floor) on a noisy line with quiet stretches
    between them: the analyser, which skips the quiet batches, finds what the bare
    detectors find on the whole filtered line, to the frame. A bound that says "quiet" too
    early loses the weak digits' and bursts' onsets here (a bound 4x too low fails), and
    resuming the DTMF detector off its window grid moves the digits' frames."""
    rate = 8000
    rng = np.random.default_rng(11)
    parts: list[np.ndarray] = []
    for level, on_s in ((-10.0, 0.05), (-40.0, 0.04), (-30.0, 0.045), (-40.0, 0.05)):
        tones, _ = dial("159#", rate, on_s=on_s, off_s=0.04, low_dbm0=level, high_dbm0=level)
        parts += [np.zeros(int(rng.integers(900, 1700))), tones.astype(np.float64)]
    bursts: list[tuple[int, int]] = []  # (start, end) of each caller-ID burst
    for message, dbfs in (("sdmf-number", -20.0), ("mdmf-name", -48.0)):
        fsk = at_level(burst(MESSAGES[message], BELL202, rate).samples, dbfs)
        parts.append(np.zeros(int(rng.integers(900, 1700))))
        start = sum(p.size for p in parts)
        parts.append(fsk)
        bursts.append((start, start + fsk.size))
    parts.append(np.zeros(rate))
    clean = np.concatenate(parts)
    x = to_int16(clean + rng.normal(0.0, 40.0, clean.size))

    line = LineAnalyser(rate, history_s=3600.0)
    for i in range(0, x.size, 160):
        line.process(x[i : i + 160], i)
    line.catch_up()
    heard = [d.event for d in line.digits_from(0)]
    ids = []
    for start, end in bursts:
        found = line.caller_id_before(end, window_frames=end - start + rate // 10)
        ids.append(None if found is None else found.number or found.name)

    filtered = HumFilter(rate).filter(x)
    bare = DtmfDetector(rate)
    truth = bare.process(filtered, 0) + bare.flush()
    decoder = CallerIdDecoder(rate)
    truth_ids = [m.number or m.name for m in decoder.process(filtered, 0)]
    assert "".join(e.digit for e in truth) == "159#" * 4
    assert heard == truth  # digits and their frames: the detector resumes on its own grid
    assert len(truth_ids) == 2 and ids == truth_ids
