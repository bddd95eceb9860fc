/** Config files are JSON with comments allowed: the README's example works when copied as written. */
import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadHostConfig, parseJsonWithComments } from '../../actors/config.js';
import { builtinDrivers } from '../../drivers/index.js';

test("the README's config example, copied as written (with its comments), loads", (t) => {
  const readme = readFileSync('README.md', 'utf8');
  const example = /```jsonc\n([\s\S]*?)```/.exec(readme)?.[1];
  if (example === undefined) return t.fail('README.md has no ```jsonc config example');
  t.regex(example, /\/\//, 'the example still has a comment');
  const file = join(mkdtempSync(join(tmpdir(), 'upci-config-')), 'host.json');
  writeFileSync(file, example);
  const config = loadHostConfig(file, builtinDrivers);
  t.true(config.devices.length >= 1);
  t.is(String(config.devices[0]!.address), '0000:00:04.0');
});

test('comments become nothing, outside strings only; positions in errors still point into the file', (t) => {
  t.deepEqual(parseJsonWithComments('{ "a": "x//y", /* b */ "b": "/*not*/" // c\n}'), { a: 'x//y', b: '/*not*/' });
  t.deepEqual(parseJsonWithComments('{ "q": "say \\"//\\"" } // end'), { q: 'say "//"' });
  const error = t.throws(() => parseJsonWithComments('/* 12345 */ { x }'));
  t.regex(error!.message, /position 14/);
});
