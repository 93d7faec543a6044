// The rate limit of the web config (rate_limit: interval and burst), a token bucket over every path but
// /healthz; over it, 429.
import type { FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import type { WebConfig } from '../config/webconfig.js'
import { isExempt, refuse, type Rejections } from './rejections.js'

type RateLimit = WebConfig['rateLimit']

/** A token bucket: `burst` tokens, one more every `intervalMs`. No rate limit: every take succeeds. */
export class TokenBucket {
  private rate: RateLimit
  private tokens = 0
  private tokensAt = 0

  constructor(rate: RateLimit) {
    this.rate = rate
    this.reset()
  }

  private reset(): void {
    this.tokens = this.rate?.burst ?? 0
    this.tokensAt = Date.now()
  }

  /** A new rate limit (a reload): the bucket starts full again, unless the limit is unchanged. */
  configure(rate: RateLimit): void {
    const changed = JSON.stringify(this.rate) !== JSON.stringify(rate)
    this.rate = rate
    if (changed) this.reset()
  }

  /** Take a token; false when the bucket is empty. */
  take(): boolean {
    const rl = this.rate
    if (!rl) return true
    const now = Date.now()
    this.tokens = Math.min(rl.burst, this.tokens + (now - this.tokensAt) / rl.intervalMs)
    this.tokensAt = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }
}

interface RateLimitOptions {
  bucket: TokenBucket
  rejected: Rejections
}

const rateLimitPlugin: FastifyPluginAsync<RateLimitOptions> = async (app, { bucket, rejected }) => {
  app.addHook('onRequest', async (req, reply) => {
    if (isExempt(req) || bucket.take()) return
    rejected.rate_limit++
    return refuse(reply, 429, 'too many requests: over the rate_limit of the web config; try again later')
  })
}

export const rateLimit = fp(rateLimitPlugin, { name: 'tcptracer-rate-limit', fastify: '5.x' })
