// Basic auth (basic_auth_users of the web config) on every path but /healthz: 401 without valid
// credentials, 503 when too many password checks are pending. The checks themselves are in webauth.ts.
import type { FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { AuthBusyError, BasicAuth, PasswordChecker, type AuthResult } from './webauth.js'
import { isExempt, refuse, type Rejections } from './rejections.js'

const WWW_AUTHENTICATE = 'Basic realm="tcptracer-exporter", charset="UTF-8"'

/** The users in force (a reload replaces them) and the password checker, made when users first appear. */
export class AuthGuard {
  private checker: PasswordChecker | undefined
  private auth: BasicAuth | undefined

  constructor(users: ReadonlyMap<string, string>) {
    this.setUsers(users)
  }

  /** Replace the users; none turns auth off. */
  setUsers(users: ReadonlyMap<string, string>): void {
    if (users.size === 0) {
      this.auth = undefined
      return
    }
    // one bcrypt check at a time, as the toolkit does (its mutex): a flood of bad passwords takes one core
    this.checker ??= new PasswordChecker({ workers: 1, maxQueued: 32 })
    if (this.auth) this.auth.setUsers(users)
    else this.auth = new BasicAuth(this.checker, users)
  }

  get enabled(): boolean {
    return this.auth?.enabled ?? false
  }

  /** Check an Authorization header. Rejects with AuthBusyError when too many checks are pending. */
  async authenticate(header: string | undefined): Promise<AuthResult> {
    return this.auth ? await this.auth.authenticate(header) : 'ok'
  }

  async close(): Promise<void> {
    await this.checker?.close()
    this.checker = undefined
    this.auth = undefined
  }
}

interface AuthOptions {
  guard: AuthGuard
  rejected: Rejections
}

const authPlugin: FastifyPluginAsync<AuthOptions> = async (app, { guard, rejected }) => {
  app.addHook('onClose', async () => await guard.close())
  app.addHook('onRequest', async (req, reply) => {
    if (isExempt(req) || !guard.enabled) return
    let result
    try {
      result = await guard.authenticate(req.headers.authorization)
    } catch (err) {
      if (!(err instanceof AuthBusyError)) throw err
      rejected.auth_overload++
      return refuse(
        reply.header('Retry-After', '1'),
        503,
        `too many password checks in progress: ${err.message}; try again later`,
      )
    }
    if (result === 'ok') return
    rejected.unauthorized++
    req.log.debug({ remote: req.ip, result }, 'basic auth refused')
    return refuse(reply.header('WWW-Authenticate', WWW_AUTHENTICATE), 401, 'unauthorized')
  })
}

export const basicAuth = fp(authPlugin, { name: 'tcptracer-auth', fastify: '5.x' })
