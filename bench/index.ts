/**
 * `npm run bench`: every measurement beside its baseline from the same run, with the ratio, medians of several
 * samples after warm-up. `--markdown` prints a Markdown table; `--quick` takes fewer samples (used by tests).
 *
 * @module
 * @example
 * ```sh
 * npm run bench
 * npm run bench -- --markdown
 * ```
 */
import { benchEnvelopes } from "./envelope.js";
import { machine, printRows, type Row } from "./harness.js";

const args = new Set(process.argv.slice(2));
const markdown = args.has("--markdown");
const quick = args.has("--quick");

const rows: Row[] = [];
rows.push(...(await benchEnvelopes({ quick })));

console.log(`sealwire bench — ${machine()}${quick ? " (quick)" : ""}`);
console.log(printRows(rows, markdown));
