// The connection families' exposition kept between scrapes.
//
// A scrape with many label sets is mostly text: 64 sample lines per label set with both directions. Most
// label sets do not change between two scrapes, so each label set's lines are rendered once
// (renderSet() in connection-families.ts), into one Buffer per family and format, and kept until its
// series change (the aggregator then gives it a new LabelSetSeries object). A scrape copies those bytes
// into the chunks it sends.
import type { LabelSetSeries } from './aggregator.js'
import { Arena, FAMILIES, renderSet, shapes, type Shapes } from './connection-families.js'
import { formatLe, labelPairs, type Format, type MetricFamily } from './exposition.js'

/** At most this many label sets are rendered anew for one chunk, so that one chunk is quick to make. */
const MAX_RENDERED_PER_CHUNK = 64

const NFAMILIES = FAMILIES.length

/** Retired Lines waited for before their Buffers can be reused; older ones are left to the GC. */
const MAX_RETIRED = 4

/** A format no scrape asked for in more than this many collections in a row has its lines dropped. */
const UNUSED_COLLECTIONS = 3

/**
 * One format's lines of one collection's label sets, family by family: family f's lines of label set i
 * are arenas[f] from starts[f][i] to starts[f][i + 1]. Filled label set by label set as the chunks ask
 * for them: copied from an earlier collection's Lines where the label set did not change, rendered
 * otherwise. A collection whose label sets are all unchanged shares the previous collection's Lines.
 */
class Lines {
  readonly arenas: Arena[]
  readonly starts: number[][]
  /** label sets appended so far */
  filled = 0
  /** collections using these lines that the server has not released yet */
  users = 0
  /** its arenas were given back for reuse: it must never be read again */
  recycled = false

  constructor(
    readonly sets: readonly LabelSetSeries[],
    sizes: readonly number[],
    spares: ReadonlyArray<Buffer | undefined>,
    /** whether `sizes` come from earlier lines; if not, the first label set's lines decide */
    readonly sized: boolean,
  ) {
    this.arenas = sizes.map((n, f) => new Arena(n, Math.ceil(1.05 * n), spares[f]))
    this.starts = sizes.map(() => [0])
  }

  get complete(): boolean {
    return this.filled === this.sets.length
  }
}

/** Where a label set's lines were last put, and of which of its series. */
interface Placed {
  of: LabelSetSeries
  lines: Lines
  index: number
}

/** What is kept of a label set between scrapes. */
interface Kept {
  /** its newest series */
  of: LabelSetSeries
  /** its label pairs, escaped, in UTF-8: `comm="x",netns="1"` */
  pairs: Uint8Array
  placed: Record<Format, Placed | undefined>
  /** the last collection that had this label set */
  gen: number
}

/** One collection's connection families: its label sets' lines, per format, made when first asked for. */
class CollectionLines {
  readonly lines: Record<Format, Lines | undefined>
  private released = false

  constructor(
    private readonly owner: ConnectionExposition,
    private readonly sets: readonly LabelSetSeries[],
    private readonly kept: readonly Kept[],
    /** the previous collection's, when it has the very same series: its Lines serve this one too */
    same: CollectionLines | undefined,
  ) {
    // the very same series: the previous collection's lines serve this one too (unless dropped)
    const carry = (format: Format): Lines | undefined => {
      const l = same?.lines[format]
      return l !== undefined && owner.isNewest(format, l) ? l : undefined
    }
    this.lines = { prometheus: carry('prometheus'), openmetrics: carry('openmetrics') }
    for (const l of Object.values(this.lines)) if (l !== undefined) l.users++
  }

  /** This collection's Lines in `format`. */
  linesFor(format: Format): Lines {
    this.owner.asked(format)
    let l = this.lines[format]
    if (l === undefined) {
      l = this.owner.newLines(format, this.sets)
      l.users++
      this.lines[format] = l
    }
    if (l.recycled) throw new Error('connection-metrics: lines read after they were recycled')
    return l
  }

  /** The server sent or dropped every chunk of this collection: its memory may be reused. */
  release(): void {
    if (this.released) return
    this.released = true
    for (const l of Object.values(this.lines)) if (l !== undefined) l.users--
    this.owner.recycle()
  }

  /**
   * Append label sets to `l` until `upTo` are in, or `maxRendered` had to be rendered. Label sets kept
   * unchanged are copied from where they were put last, runs of them with one copy per family.
   */
  private fill(l: Lines, format: Format, upTo: number, maxRendered: number): void {
    const sh = this.owner.shapes
    const nb = this.owner.nbounds
    const om = format === 'openmetrics'
    let rendered = 0
    // a run of label sets to copy: from `run` (a Lines), indexes runFrom .. runTo - 1
    let run: Lines | undefined
    let runFrom = 0
    let runTo = 0
    const flush = (): void => {
      if (run === undefined) return
      for (let f = 0; f < NFAMILIES; f++) {
        const src = run.starts[f]!
        const dst = l.starts[f]!
        const a = l.arenas[f]!
        const base = a.at - src[runFrom]!
        a.append(run.arenas[f]!.buf, src[runFrom]!, src[runTo]!)
        for (let j = runFrom + 1; j <= runTo; j++) dst.push(base + src[j]!)
      }
      run = undefined
    }
    while (l.filled < upTo && rendered < maxRendered) {
      const i = l.filled
      const s = l.sets[i]!
      const k = this.kept[i]!
      const at = k.placed[format]
      // (never from recycled Lines: their Buffers may be another's arenas now)
      if (
        at !== undefined &&
        at.of === s &&
        at.lines !== l &&
        !at.lines.recycled &&
        at.index < at.lines.filled
      ) {
        if (run === at.lines && runTo === at.index) {
          runTo++
        } else {
          flush()
          run = at.lines
          runFrom = at.index
          runTo = at.index + 1
        }
      } else {
        flush()
        renderSet(s, k.pairs, sh, nb, om, l.arenas)
        rendered++
        this.owner.rendered++
        for (let f = 0; f < NFAMILIES; f++) l.starts[f]!.push(l.arenas[f]!.at)
      }
      // the newest series of the label set are now here too (never point it at older series)
      if (k.of === s) k.placed[format] = { of: s, lines: l, index: i }
      l.filled++
      if (l.filled === 1 && !l.sized) {
        // the first lines of this format: as much room as the first label set's lines times all of them
        const n = l.sets.length
        for (const a of l.arenas) a.reserve(Math.ceil(1.1 * a.at * n) + 4096)
      }
    }
    flush()
    // the lines this one was copied from may be free now
    if (l.complete) this.owner.recycle()
  }

  *chunks(f: number, format: Format, bytes: number): Generator<Buffer> {
    // A response cut off between two chunks can resume its generator once more after the release: it
    // must then neither fill nor read Lines whose Buffers may already be reused
    if (this.released) return
    const l = this.linesFor(format)
    const n = l.sets.length
    let i = 0
    while (i < n) {
      if (this.released || l.recycled) return
      // what is not in yet: copied, or rendered (at most one batch of label sets for this chunk)
      if (l.filled < n) this.fill(l, format, n, MAX_RENDERED_PER_CHUNK)
      // as many label sets as make about `bytes` of this family, and at least one
      const starts = l.starts[f]!
      let j = i + 1
      while (j < l.filled && starts[j + 1]! - starts[i]! <= bytes) j++
      // a view of the arena, which may later be replaced by a bigger copy but never changes where filled
      if (starts[j]! > starts[i]!) yield l.arenas[f]!.buf.subarray(starts[i]!, starts[j]!)
      i = j
    }
  }
}

/**
 * The connection families of successive snapshots, each label set's lines rendered once and kept until
 * its series change. Label sets gone from a snapshot are forgotten.
 */
export class ConnectionExposition {
  /** label sets rendered so far, in either format (the rest of what was sent was copied or shared) */
  rendered = 0
  /** the newest Lines of each format: new ones are sized like it */
  private readonly newest: Record<Format, Lines | undefined> = {
    prometheus: undefined,
    openmetrics: undefined,
  }
  /** Lines no longer the newest of their format, to recycle once nothing uses them */
  private readonly retired: Lines[] = []
  /** one recycled Buffer per family, for the next Lines of either format */
  private readonly spares: Array<Buffer | undefined> = []
  /** Buffers of recycled Lines reused so far (a number for the tests) */
  reused = 0
  shapes: Shapes = shapes([])
  nbounds = 0
  private kept = new Map<string, Kept>()
  private gen = 0
  private bounds: readonly number[] | undefined
  private last: CollectionLines | undefined
  private lastSets: readonly LabelSetSeries[] = []

  /** the last collection in which each format was asked for */
  private readonly askedAt: Record<Format, number> = { prometheus: 0, openmetrics: 0 }
  /** the family sizes of a format's last lines, to size the next ones after its lines were dropped */
  private readonly sizesOf: Record<Format, number[] | undefined> = {
    prometheus: undefined,
    openmetrics: undefined,
  }

  isNewest(format: Format, l: Lines): boolean {
    return this.newest[format] === l
  }

  asked(format: Format): void {
    this.askedAt[format] = this.gen
  }

  /**
   * Drop the lines of a format no scrape asked for lately (a Prometheus that scraped OpenMetrics once,
   * say): nothing is copied from them any more, and they go once no collection uses them.
   */
  private dropUnused(): void {
    for (const format of ['prometheus', 'openmetrics'] as const) {
      const l = this.newest[format]
      // the collections since the last that asked for it, this one not counted (it has not asked yet)
      if (l === undefined || this.gen - this.askedAt[format] - 1 <= UNUSED_COLLECTIONS) continue
      this.sizesOf[format] = l.arenas.map((a) => a.at)
      this.newest[format] = undefined
      for (const k of this.kept.values()) k.placed[format] = undefined
    }
  }

  /** New Lines in `format` for these label sets, in recycled Buffers where there are big enough ones. */
  newLines(format: Format, sets: readonly LabelSetSeries[]): Lines {
    // sized like the newest Lines of this format, which most label sets are copied from (or of the
    // other format, whose lines are as long: only a histogram's _sum and _count swap places)
    const like = this.newest[format]
    const other = this.newest[format === 'openmetrics' ? 'prometheus' : 'openmetrics']
    const hint = (like ?? other)?.arenas.map((a) => a.at) ?? this.sizesOf[format]
    const spares = this.spares
    const sizes = FAMILIES.map((_, f) => (hint ? hint[f]! : 1 << 12))
    const l = new Lines(sets, sizes, spares, hint !== undefined)
    for (let f = 0; f < NFAMILIES; f++) {
      if (spares[f] !== undefined && l.arenas[f]!.buf === spares[f]) this.reused++
      spares[f] = undefined
    }
    if (like !== undefined) {
      this.retired.push(like)
      // Lines a collection never released (a scrape that failed midway, say) are left to the garbage
      // collector: only the last few are waited for
      if (this.retired.length > MAX_RETIRED) this.retired.shift()
    }
    this.newest[format] = l
    return l
  }

  /**
   * Give the Buffers of retired Lines back for reuse, once no collection the server has not released
   * uses them and no label set is to be copied from them. Lines never released are left to the
   * garbage collector.
   */
  recycle(): void {
    for (let r = 0; r < this.retired.length; r++) {
      const l = this.retired[r]!
      if (l.users > 0) continue
      let inUse = false
      for (const k of this.kept.values()) {
        if (k.placed.prometheus?.lines === l || k.placed.openmetrics?.lines === l) {
          inUse = true
          break
        }
      }
      if (inUse) continue
      this.retired.splice(r--, 1)
      l.recycled = true
      const spares = this.spares
      for (let f = 0; f < NFAMILIES; f++) {
        const b = l.arenas[f]!.buf
        if (spares[f] === undefined || spares[f]!.length < b.length) spares[f] = b
      }
    }
  }

  families(sets: readonly LabelSetSeries[], bounds: readonly number[]): MetricFamily[] {
    if (bounds !== this.bounds) {
      let prev = -Infinity
      for (const b of bounds) {
        if (!Number.isFinite(b) || !(b > prev)) {
          throw new Error(`histogram bounds must be finite and increasing, got ${String(bounds)}`)
        }
        prev = b
      }
      this.bounds = bounds
      this.shapes = shapes(bounds.map(formatLe))
      this.nbounds = bounds.length
      this.kept.clear()
      this.last = undefined
      this.lastSets = []
      this.newest.prometheus = undefined
      this.newest.openmetrics = undefined
      this.retired.length = 0
      this.spares.length = 0
      this.sizesOf.prometheus = undefined
      this.sizesOf.openmetrics = undefined
    }
    const gen = ++this.gen
    this.dropUnused()
    const kept: Kept[] = new Array<Kept>(sets.length)
    let same = sets.length === this.lastSets.length
    for (let i = 0; i < sets.length; i++) {
      const s = sets[i]!
      if (same && this.lastSets[i] !== s) same = false
      let k = this.kept.get(s.id)
      if (k === undefined) {
        k = {
          of: s,
          pairs: new Uint8Array(Buffer.from(labelPairs(s.labels, 'label set', false), 'utf8')),
          placed: { prometheus: undefined, openmetrics: undefined },
          gen,
        }
        this.kept.set(s.id, k)
      } else {
        k.of = s
      }
      k.gen = gen
      kept[i] = k
    }
    if (this.kept.size > sets.length) {
      this.kept.forEach((k, id) => {
        if (k.gen !== gen) this.kept.delete(id)
      })
    }
    const lines = new CollectionLines(this, sets, kept, same ? this.last : undefined)
    this.last = lines
    this.lastSets = sets
    return FAMILIES.map((f, i) => ({
      ...f,
      lines: {
        chunks: (format: Format, bytes: number) => lines.chunks(i, format, bytes),
        release: () => lines.release(),
      },
    }))
  }
}
