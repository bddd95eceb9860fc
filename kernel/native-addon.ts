/**
 * Loads one of upci's node-gyp addons (binding.gyp): the little native code
 * that koffi cannot replace. Each is built by `npm install`.
 */
import { createRequire } from 'node:module';
import { UpciError } from './errors.js';

const require = createRequire(import.meta.url);

/** `name` is the binding.gyp target; `what` says what it is for, in the error when it is missing. */
export function loadNativeAddon<T>(name: string, what: string): T {
  const path = `build/Release/${name}.node`;
  try {
    // dist/kernel/ is two levels below the project root.
    return require(`../../${path}`) as T;
  } catch (cause) {
    throw new UpciError('KERNEL', `the native ${what} addon is not built`, `run \`npm install\` (it builds ${path} with node-gyp)`, { cause });
  }
}
