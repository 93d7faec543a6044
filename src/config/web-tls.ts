// The TLS part of the web config (tls_server_config): the toolkit's names for client auth types, TLS
// versions, cipher suites and curves, and Node's; the checks across its keys; and the certificate, key
// and CA files read and checked, so that a web config that loads is one the server can use.

import { X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { createSecureContext, type SecureContextOptions, type SecureVersion } from 'node:tls'

import type { ConfigProblem } from './yaml.js'

// ---------------------------------------------------------------------------------------------------------
// Vocabulary

/** The toolkit's client_auth_type values (Go's tls.ClientAuthType names); RequireClientCert is its old alias. */
export const CLIENT_AUTH_TYPES = [
  'NoClientCert',
  'RequestClientCert',
  'RequireAnyClientCert',
  'VerifyClientCertIfGiven',
  'RequireAndVerifyClientCert',
] as const
export type ClientAuthType = (typeof CLIENT_AUTH_TYPES)[number]

export const TLS_VERSIONS: Record<string, SecureVersion> = {
  TLS10: 'TLSv1',
  TLS11: 'TLSv1.1',
  TLS12: 'TLSv1.2',
  TLS13: 'TLSv1.3',
}
const VERSION_ORDER: readonly SecureVersion[] = ['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3']

/**
 * Go's cipher suite names (crypto/tls) and OpenSSL's names for the same suites. Go configures only the
 * suites of TLS 1.2 and older; the TLS 1.3 names are accepted as Go accepts them, and TLS 1.3 keeps its
 * default suites either way.
 */
export const CIPHER_SUITES: Record<string, string | null> = {
  TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: 'ECDHE-ECDSA-AES128-GCM-SHA256',
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: 'ECDHE-RSA-AES128-GCM-SHA256',
  TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: 'ECDHE-ECDSA-AES256-GCM-SHA384',
  TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: 'ECDHE-RSA-AES256-GCM-SHA384',
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: 'ECDHE-ECDSA-CHACHA20-POLY1305',
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: 'ECDHE-RSA-CHACHA20-POLY1305',
  TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA: 'ECDHE-ECDSA-AES128-SHA',
  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA: 'ECDHE-RSA-AES128-SHA',
  TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA: 'ECDHE-ECDSA-AES256-SHA',
  TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA: 'ECDHE-RSA-AES256-SHA',
  TLS_AES_128_GCM_SHA256: null,
  TLS_AES_256_GCM_SHA384: null,
  TLS_CHACHA20_POLY1305_SHA256: null,
}
const TLS13_SUITES = 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256'

/** Go's curve names and OpenSSL's. */
export const CURVES: Record<string, string> = {
  CurveP256: 'P-256',
  CurveP384: 'P-384',
  CurveP521: 'P-521',
  X25519: 'X25519',
}

/** tls_server_config as the schema in webconfig.ts gives it. */
interface TlsServerConfig {
  cert?: string | undefined
  key?: string | undefined
  client_ca?: string | undefined
  cert_file?: string | undefined
  key_file?: string | undefined
  client_ca_file?: string | undefined
  client_auth_type?: string | undefined
  min_version?: string | undefined
  max_version?: string | undefined
  cipher_suites?: string[] | undefined
  prefer_server_cipher_suites?: boolean | undefined
  curve_preferences?: string[] | undefined
}

export interface TlsSettings {
  /** Handed to tls.createServer / server.setSecureContext. */
  context: SecureContextOptions
  clientAuth: ClientAuthType
  /** tls.Server options derived from clientAuth */
  requestCert: boolean
  rejectUnauthorized: boolean
  /** where the certificate came from, for logs */
  certSource: string
}

// ---------------------------------------------------------------------------------------------------------
// Checks and files

/** The problems of a tls_server_config the schema cannot see: keys that exclude or need each other. */
export function tlsProblems(t: TlsServerConfig): ConfigProblem[] {
  const problems: ConfigProblem[] = []
  if (t.cert !== undefined && t.cert_file !== undefined) {
    problems.push({ path: 'tls_server_config.cert', message: 'give cert or cert_file, not both' })
  }
  if (t.key !== undefined && t.key_file !== undefined) {
    problems.push({ path: 'tls_server_config.key', message: 'give key or key_file, not both' })
  }
  if (t.client_ca !== undefined && t.client_ca_file !== undefined) {
    problems.push({
      path: 'tls_server_config.client_ca',
      message: 'give client_ca or client_ca_file, not both',
    })
  }
  if (t.cert === undefined && t.cert_file === undefined) {
    problems.push({
      path: 'tls_server_config.cert_file',
      message: 'TLS is configured, so a certificate is needed: cert_file (or cert)',
    })
  }
  if (t.key === undefined && t.key_file === undefined) {
    problems.push({
      path: 'tls_server_config.key_file',
      message: 'TLS is configured, so a private key is needed: key_file (or key)',
    })
  }
  const auth = clientAuth(t.client_auth_type)
  const hasCa = t.client_ca !== undefined || t.client_ca_file !== undefined
  if (hasCa && auth === 'NoClientCert') {
    problems.push({
      path: 'tls_server_config.client_auth_type',
      message:
        'a client CA is configured but client_auth_type is NoClientCert; set RequireAndVerifyClientCert (or remove the CA)',
    })
  }
  if (!hasCa && (auth === 'VerifyClientCertIfGiven' || auth === 'RequireAndVerifyClientCert')) {
    problems.push({
      path: 'tls_server_config.client_ca_file',
      message: `client_auth_type ${auth} verifies client certificates, so it needs the CA to verify them against: client_ca_file (or client_ca)`,
    })
  }
  const min = TLS_VERSIONS[t.min_version ?? 'TLS12']!
  const max = TLS_VERSIONS[t.max_version ?? 'TLS13']!
  if (VERSION_ORDER.indexOf(min) > VERSION_ORDER.indexOf(max)) {
    problems.push({
      path: 'tls_server_config.min_version',
      message: `${t.min_version ?? 'TLS12'} is above max_version ${t.max_version ?? 'TLS13'}`,
    })
  }
  return problems
}

function clientAuth(v: string | undefined): ClientAuthType {
  if (v === undefined) return 'NoClientCert'
  return v === 'RequireClientCert' ? 'RequireAnyClientCert' : (v as ClientAuthType)
}

/**
 * Node's `ciphers` for the configured suites. OpenSSL 3 refuses TLS 1.0 and 1.1 at its default security
 * level, so min_version TLS10/TLS11 also lowers the level to 0: that is what those versions take.
 */
function cipherString(ciphers: string[] | undefined, min: string | undefined): { ciphers?: string } {
  let list = ciphers && ciphers.length > 0 ? `${TLS13_SUITES}:${ciphers.join(':')}` : undefined
  if (min === 'TLS10' || min === 'TLS11') list = `${list ?? 'DEFAULT'}:@SECLEVEL=0`
  return list === undefined ? {} : { ciphers: list }
}

/** Read a file named in the config, relative to the config file's directory as the toolkit does. */
async function readNamed(
  file: string,
  key: string,
  name: string,
  problems: ConfigProblem[],
): Promise<string | undefined> {
  const full = path.resolve(path.dirname(file), name)
  try {
    return await readFile(full, 'utf8')
  } catch (err) {
    problems.push({
      path: key,
      message: `cannot read ${full}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    })
    return undefined
  }
}

/** The PEM certificates in text (CERTIFICATE blocks that parse), or an explanation. */
function certificates(pem: string): X509Certificate[] | string {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []
  if (blocks.length === 0) return 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)'
  try {
    return blocks.map((b) => new X509Certificate(b))
  } catch (err) {
    return `holds a certificate that does not parse: ${(err as Error).message}`
  }
}

/**
 * Read and check the files a tls_server_config names (relative to the web config `file`), adding a problem
 * for each that cannot be used, and make the server's TLS settings.
 */
export async function loadTls(
  file: string,
  t: TlsServerConfig,
  problems: ConfigProblem[],
): Promise<TlsSettings> {
  const cert = t.cert ?? (await readNamed(file, 'tls_server_config.cert_file', t.cert_file!, problems))
  const key = t.key ?? (await readNamed(file, 'tls_server_config.key_file', t.key_file!, problems))
  let ca: string | undefined
  if (t.client_ca !== undefined || t.client_ca_file !== undefined) {
    ca =
      t.client_ca ?? (await readNamed(file, 'tls_server_config.client_ca_file', t.client_ca_file!, problems))
    if (ca !== undefined) {
      const certs = certificates(ca)
      if (typeof certs === 'string') {
        problems.push({
          path: t.client_ca_file ? 'tls_server_config.client_ca_file' : 'tls_server_config.client_ca',
          message: certs,
        })
      }
    }
  }
  if (cert !== undefined) {
    const certs = certificates(cert)
    if (typeof certs === 'string') {
      problems.push({
        path: t.cert_file ? 'tls_server_config.cert_file' : 'tls_server_config.cert',
        message: certs,
      })
    }
  }
  const auth = clientAuth(t.client_auth_type)
  const ciphers = t.cipher_suites
    ?.map((c) => CIPHER_SUITES[c])
    .filter((c): c is string => typeof c === 'string')
  const context: SecureContextOptions = {
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
    ...(ca === undefined ? {} : { ca }),
    minVersion: TLS_VERSIONS[t.min_version ?? 'TLS12']!,
    maxVersion: TLS_VERSIONS[t.max_version ?? 'TLS13']!,
    honorCipherOrder: t.prefer_server_cipher_suites ?? true,
    ...cipherString(ciphers, t.min_version),
    ...(t.curve_preferences && t.curve_preferences.length > 0
      ? { ecdhCurve: t.curve_preferences.map((c) => CURVES[c]).join(':') }
      : {}),
  }
  if (problems.length === 0) {
    // the same check the server makes when it starts: the key must match the certificate
    try {
      createSecureContext(context)
    } catch (err) {
      problems.push({
        path: t.cert_file || t.key_file ? 'tls_server_config.cert_file' : 'tls_server_config.cert',
        message: `the certificate and key cannot be used: ${(err as Error).message}`,
      })
    }
  }
  return {
    context,
    clientAuth: auth,
    requestCert: auth !== 'NoClientCert',
    rejectUnauthorized: auth === 'RequireAndVerifyClientCert',
    certSource: t.cert_file ? path.resolve(path.dirname(file), t.cert_file) : '(inline cert)',
  }
}
