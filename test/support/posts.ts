/** Counts this thread's messages: every MessagePort's postMessage (a Worker's postMessage goes through one too). */
import { MessagePort } from 'node:worker_threads';

/** Counts postMessage calls on every MessagePort of this thread while `work` runs. */
export async function countingPosts<T>(work: () => Promise<T>): Promise<{ result: T; posts: number }> {
  const post = MessagePort.prototype.postMessage;
  let posts = 0;
  MessagePort.prototype.postMessage = function (this: MessagePort, ...args: Parameters<MessagePort['postMessage']>) {
    posts++;
    return post.apply(this, args);
  };
  try {
    return { result: await work(), posts };
  } finally {
    MessagePort.prototype.postMessage = post;
  }
}
