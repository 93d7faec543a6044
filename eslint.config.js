import neostandard from 'neostandard'

/**
 * The layers of src/ (docs/architecture.md), top first: each folder may import from the folders
 * listed for it and from none other. src/cli.ts, the entry point, may import any of them; nothing
 * imports it.
 */
const LAYERS = {
  cli: ['exporter', 'http', 'metrics', 'kernel', 'host', 'config'],
  exporter: ['http', 'metrics', 'kernel', 'host', 'config'],
  http: ['metrics', 'kernel', 'host', 'config'],
  metrics: ['kernel', 'host', 'config'],
  host: ['kernel'],
  config: ['kernel'],
  kernel: [],
}

const layerRules = Object.entries(LAYERS).map(([folder, allowed]) => {
  const forbidden = Object.keys(LAYERS).filter((f) => f !== folder && !allowed.includes(f))
  const patterns = [
    {
      regex: '^\\.\\./cli\\.js$',
      message: 'src/cli.ts is the entry point: nothing imports it.',
    },
  ]
  if (forbidden.length > 0) {
    patterns.push({
      regex: `^\\.\\./(${forbidden.join('|')})/`,
      message:
        `src/${folder}/ may import only from ${allowed.length ? allowed.map((f) => `src/${f}/`).join(', ') : 'itself'}: ` +
        'a lower layer never imports an upper one (docs/architecture.md). Move what both need down.',
    })
  }
  return {
    files: [`src/${folder}/**/*.ts`],
    rules: { 'no-restricted-imports': ['error', { patterns }] },
  }
})

export default [
  ...neostandard({
    ts: true,
    noStyle: true,
    ignores: ['dist/**', 'addon/build/**', '.output/**', 'bench/results/**'],
  }),
  ...layerRules,
  {
    files: ['src/**/*.ts'],
    rules: {
      // the layer rule reads import declarations: an import() would slip past it
      'no-restricted-syntax': [
        'error',
        { selector: 'ImportExpression', message: 'no import() in src/: the layer rule cannot check it.' },
      ],
    },
  },
]
