/**
 * Hugging Face repo ids resolved in the local Hugging Face cache, never downloaded. The cache is huggingface_hub's:
 * `<cache>/models--<org>--<name>/refs/<ref>` holds the commit a branch or tag pointed at when it was downloaded,
 * `<cache>/models--<org>--<name>/snapshots/<commit>/` the repository's files at that commit.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { X2IError, invalidArg } from './errors.js';

export interface HubOptions {
  /** A commit (40 hex digits), or a branch or tag read from `refs/<name>` in the cache. Default: `main`, or the
   * `@revision` of the id. Only for repo ids (a local path is used as it is). */
  revision?: string;
  /** The one cache folder to look in (huggingface_hub's `cache_dir`). Default: hubCacheDirs(). */
  cacheDir?: string;
}

/** `~` and `~/...` as the home folder (huggingface_hub expands them in its environment variables). */
function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

/**
 * The cache folders a repo id is looked up in, in order, as huggingface_hub picks its cache: `HF_HUB_CACHE`, then
 * `HUGGINGFACE_HUB_CACHE`, then `$HF_HOME/hub`, then `$XDG_CACHE_HOME/huggingface/hub`, then
 * `~/.cache/huggingface/hub`. huggingface_hub uses the first of these that is set; x2i also looks in the later
 * ones (without duplicates), so that a model downloaded under another setting is still found.
 */
export function hubCacheDirs(): string[] {
  const env = (k: string) => (process.env[k] ? expandHome(process.env[k]!) : undefined);
  const dirs = [env('HF_HUB_CACHE'), env('HUGGINGFACE_HUB_CACHE'),
    env('HF_HOME') && path.join(env('HF_HOME')!, 'hub'),
    env('XDG_CACHE_HOME') && path.join(env('XDG_CACHE_HOME')!, 'huggingface', 'hub'),
    path.join(os.homedir(), '.cache', 'huggingface', 'hub')];
  return [...new Set(dirs.filter((d): d is string => !!d).map((d) => path.resolve(d)))];
}

// huggingface_hub's repo id rules: letters, digits, '_', '-', '.', starting and ending with a letter, digit or '_',
// no '--' or '..', at most 96 characters in all.
const NAME = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;
const PART = /^[A-Za-z0-9_.-]+$/;
const REF = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*$/;
const COMMIT = /^[0-9a-f]{40}$/;
const ID_SYNTAX = "'org/name', 'org/name@revision' or 'org/name[@revision]/sub/folder' (names of letters, digits, " +
  "'_', '-' and '.', no '--' or '..')";

interface RepoRef { org: string; name: string; revision?: string; sub: string[] }

/** `org/name[@revision][/sub/folder]` (HfFileSystem's form; a revision with '/' as `%2F`), or why it is not one. */
function parseRepoId(id: string): RepoRef | string {
  const parts = id.split('/');
  if (parts.length < 2) return 'no org/name';
  const [org, nameRev, ...sub] = parts;
  const at = nameRev.indexOf('@');
  const name = at < 0 ? nameRev : nameRev.slice(0, at);
  let revision: string | undefined;
  if (at >= 0) {
    try {
      revision = decodeURIComponent(nameRev.slice(at + 1));
    } catch {
      return `revision '${nameRev.slice(at + 1)}' is not valid percent-encoding`;
    }
  }
  const repo = `${org}/${name}`;
  if (!NAME.test(org) || !NAME.test(name) || repo.includes('--') || repo.includes('..') || repo.length > 96)
    return `'${repo}' is not a repo id`;
  for (const s of sub)
    if (!PART.test(s) || /^\.+$/.test(s)) return `subfolder part '${s}' is not a file or folder name`;
  if (revision !== undefined) {
    const why = checkRevision(revision);
    if (why) return why;
  }
  return { org, name, revision, sub };
}

function checkRevision(r: string): string | undefined {
  if (!REF.test(r) || r.split('/').some((s) => /^\.+$/.test(s)) || r.length > 256)
    return `revision ${JSON.stringify(r)} is not a commit or a branch or tag name`;
  return undefined;
}

/** `child` lies inside `dir` (after resolving '.' and '..'). */
function inside(dir: string, child: string): boolean {
  const rel = path.relative(dir, child);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

/**
 * A local model path, or a Hugging Face repo id resolved in the local cache; nothing is downloaded.
 *
 * An existing file or folder is returned as it is. Otherwise `org/name` (optionally `org/name@revision`, and a
 * subfolder or file of the repository after it: `black-forest-labs/FLUX.1-dev/transformer`) is looked up as
 * `models--org--name/snapshots/<commit>[/sub/folder]` in `opts.cacheDir`, else in each of hubCacheDirs(); the
 * commit is the revision itself when it is 40 hex digits, else the one `refs/<revision>` names (default `main`).
 * Throws an X2IError: ERR_FILE_NOT_FOUND listing every place looked in, ERR_INVALID_ARG for a string that is neither
 * an existing path nor a well-formed repo id (`..`, absolute parts, other characters: nothing outside the cache is
 * reached through an id).
 */
export function resolveModelPath(pathOrRepoId: string, opts: HubOptions = {}): string {
  if (typeof pathOrRepoId !== 'string' || pathOrRepoId === '') throw invalidArg('path', 'a model path or a Hugging Face repo id', pathOrRepoId);
  if (opts.revision !== undefined && typeof opts.revision !== 'string') throw invalidArg('revision', 'a string', opts.revision);
  if (opts.cacheDir !== undefined && (typeof opts.cacheDir !== 'string' || opts.cacheDir === ''))
    throw invalidArg('cacheDir', 'a folder path', opts.cacheDir);
  if (fs.existsSync(pathOrRepoId)) return pathOrRepoId;
  const id = pathOrRepoId;
  if (path.isAbsolute(id) || /^\.\.?([/\\]|$)/.test(id) || id.startsWith('~') || !id.includes('/'))
    throw new X2IError(`${id}: no such file or folder`, 'ERR_FILE_NOT_FOUND');
  const repo = parseRepoId(id);
  if (typeof repo === 'string')
    throw new X2IError(`${id}: no such file or folder, and not a Hugging Face repo id: ${repo} (expected ${ID_SYNTAX})`, 'ERR_INVALID_ARG');
  if (opts.revision !== undefined) {
    const why = checkRevision(opts.revision);
    if (why) throw new X2IError(`options.revision: ${why}`, 'ERR_INVALID_ARG');
    if (repo.revision !== undefined && repo.revision !== opts.revision)
      throw new X2IError(`${id}: revision '${repo.revision}' in the id and options.revision '${opts.revision}' differ`, 'ERR_INVALID_ARG');
  }
  const revision = repo.revision ?? opts.revision ?? 'main';
  const dirs = opts.cacheDir !== undefined ? [path.resolve(expandHome(opts.cacheDir))] : hubCacheDirs();
  const folder = `models--${repo.org}--${repo.name}`;
  const looked: string[] = [];
  for (const cache of dirs) {
    const repoDir = path.join(cache, folder);
    if (!inside(cache, repoDir)) throw new X2IError(`${id}: resolves outside the cache ${cache}`, 'ERR_INVALID_ARG');
    if (!fs.existsSync(repoDir)) { looked.push(`${repoDir}: no such folder`); continue; }
    let commit = revision;
    if (!COMMIT.test(revision)) {
      const ref = path.join(repoDir, 'refs', revision);
      if (!inside(repoDir, ref)) throw new X2IError(`${id}: revision '${revision}' resolves outside ${repoDir}`, 'ERR_INVALID_ARG');
      const text = fs.existsSync(ref) && fs.statSync(ref).isFile() ? fs.readFileSync(ref, 'utf8').trim() : undefined;
      if (text === undefined) {
        // huggingface_hub also takes a snapshot folder named like the revision when no ref names it
        const direct = path.join(repoDir, 'snapshots', revision);
        if (!fs.existsSync(direct)) { looked.push(`${ref}: no such ref file (${snapshots(repoDir)})`); continue; }
      } else if (!COMMIT.test(text)) {
        looked.push(`${ref}: holds ${JSON.stringify(text.slice(0, 60))}, not a 40-hex commit`);
        continue;
      } else {
        commit = text;
      }
    }
    const snapshot = path.join(repoDir, 'snapshots', commit);
    const target = path.join(snapshot, ...repo.sub);
    if (!inside(repoDir, target)) throw new X2IError(`${id}: resolves outside ${repoDir}`, 'ERR_INVALID_ARG');
    if (fs.existsSync(target)) return target;
    looked.push(fs.existsSync(snapshot) ? `${target}: no such file or folder in the snapshot`
      : `${snapshot}: no such snapshot (${snapshots(repoDir)})`);
  }
  throw new X2IError(`${id}: no such local file or folder, and revision '${revision}' of Hugging Face repo ` +
    `${repo.org}/${repo.name} is not in the local cache (nothing is downloaded). Looked in:\n  ${looked.join('\n  ')}\n` +
    `Download it first (e.g. \`hf download ${repo.org}/${repo.name}\`), or pass a local path or another cacheDir.`,
  'ERR_FILE_NOT_FOUND');
}

/** The snapshots a repo folder holds, for the error message. */
function snapshots(repoDir: string): string {
  const dir = path.join(repoDir, 'snapshots');
  const names = fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => COMMIT.test(n)) : [];
  return names.length ? `snapshots: ${names.slice(0, 5).join(', ')}${names.length > 5 ? ', ...' : ''}` : 'no snapshots';
}
