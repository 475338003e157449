// Audio worklets of the page, both at the AudioContext's 24 kHz (Chromium resamples the microphone).
// capture: microphone -> 20 ms PCM16 buffers (and their level) to the page.
// playback: PCM16 chunks of a reply, played back to back as they arrive; counts what was played per item.

const FRAME = 480; // 20 ms at 24 kHz

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buffer = new Int16Array(FRAME);
    this.fill = 0;
    this.energy = 0;
  }

  process(inputs) {
    const channel = inputs[0][0];
    if (!channel) return true;
    for (const v of channel) {
      const s = Math.max(-1, Math.min(1, v));
      this.buffer[this.fill++] = Math.round(s * 32767);
      this.energy += s * s;
      if (this.fill === FRAME) {
        const pcm = this.buffer.buffer;
        this.port.postMessage({pcm, rms: Math.sqrt(this.energy / FRAME)}, [pcm]);
        this.buffer = new Int16Array(FRAME);
        this.fill = 0;
        this.energy = 0;
      }
    }
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // [{item, samples: Float32Array, offset}]
    this.played = {}; // item id -> samples played
    this.last = 0;
    this.port.onmessage = ({data}) => {
      if (data.type === "push") this.queue.push({item: data.item, samples: data.samples, offset: 0});
      else if (data.type === "flush") {
        this.queue = [];
        this.port.postMessage({type: "flushed", played: {...this.played}});
      }
    };
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const head = this.queue[0];
      const n = Math.min(out.length - i, head.samples.length - head.offset);
      out.set(head.samples.subarray(head.offset, head.offset + n), i);
      head.offset += n;
      i += n;
      if (!this.played[head.item] && n > 0) this.port.postMessage({type: "started", item: head.item});
      this.played[head.item] = (this.played[head.item] || 0) + n;
      if (head.offset === head.samples.length) this.queue.shift();
    }
    out.fill(0, i);
    if (currentTime - this.last > 0.05) { // about 20 reports a second
      this.last = currentTime;
      this.port.postMessage({type: "played", played: {...this.played}, queued: this.queue.length > 0});
    }
    return true;
  }
}

registerProcessor("covo-capture", Capture);
registerProcessor("covo-playback", Playback);
