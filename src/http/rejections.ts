// Requests refused before they reach their handler: the answer the guards send and the counts behind
// tcptracer_http_requests_rejected_total.
import type { FastifyReply, FastifyRequest } from 'fastify'

export const TEXT = 'text/plain; charset=utf-8'

export const REJECT_REASONS = ['unauthorized', 'auth_overload', 'rate_limit', 'max_requests'] as const
type RejectReason = (typeof REJECT_REASONS)[number]

/** Refusals by reason; each guard counts its own. */
export type Rejections = Record<RejectReason, number>

export function newRejections(): Rejections {
  return { unauthorized: 0, auth_overload: 0, rate_limit: 0, max_requests: 0 }
}

/** A plain-text refusal. */
export function refuse(reply: FastifyReply, code: number, message: string): FastifyReply {
  return reply.code(code).type(TEXT).send(`${message}\n`)
}

/** /healthz: a liveness probe (the kubelet's) must not need credentials nor be starved by a flood. */
export function isExempt(req: FastifyRequest): boolean {
  return req.routeOptions.url === '/healthz'
}
