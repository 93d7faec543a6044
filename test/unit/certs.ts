// Test PKI made at test time with the openssl CLI: a CA, a server certificate for 127.0.0.1 and
// localhost, a client certificate from the same CA, and a second CA with its own client certificate
// (the "wrong CA"). EC P-256 keys: fast to make.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

export interface Pki {
  dir: string
  caCert: string
  serverCert: string
  serverKey: string
  /** a second server certificate from the same CA (CN rotated.test), for rotation */
  server2Cert: string
  server2Key: string
  clientCert: string
  clientKey: string
  otherCaCert: string
  otherClientCert: string
  otherClientKey: string
  cleanup(): void
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] })
}

function key(cwd: string, name: string): void {
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', name], cwd)
}

function ca(cwd: string, name: string, cn: string): void {
  key(cwd, `${name}.key`)
  openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      `${name}.key`,
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
    ],
    cwd,
  )
}

function leaf(cwd: string, name: string, caName: string, cn: string, ext: string): void {
  key(cwd, `${name}.key`)
  openssl(['req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`], cwd)
  writeFileSync(path.join(cwd, `${name}.ext`), ext)
  openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${caName}.crt`,
      '-CAkey',
      `${caName}.key`,
      '-CAcreateserial',
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    ],
    cwd,
  )
}

export function makePki(): Pki {
  const dir = mkdtempSync(path.join(tmpdir(), 'tt-pki-'))
  const serverExt = 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'
  const clientExt = 'extendedKeyUsage=clientAuth\n'
  ca(dir, 'ca', 'tcptracer test CA')
  leaf(dir, 'server', 'ca', 'localhost', serverExt)
  leaf(dir, 'server2', 'ca', 'rotated.test', serverExt)
  leaf(dir, 'client', 'ca', 'prometheus', clientExt)
  ca(dir, 'other-ca', 'some other CA')
  leaf(dir, 'other-client', 'other-ca', 'intruder', clientExt)
  const p = (f: string): string => path.join(dir, f)
  return {
    dir,
    caCert: p('ca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    server2Cert: p('server2.crt'),
    server2Key: p('server2.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    otherCaCert: p('other-ca.crt'),
    otherClientCert: p('other-client.crt'),
    otherClientKey: p('other-client.key'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  }
}
