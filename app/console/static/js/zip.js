// A minimal zip writer (STORE, no compression) for folder uploads: images are already compressed, and
// storing keeps this small enough to read. Layout (APPNOTE 6.3.x): per file a local header + the bytes,
// then the central directory, then the end-of-central-directory record. UTF-8 names (flag bit 11).

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3), the checksum zip stores per file. */
export function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i += 1) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function dosDateTime(date) {
  const time = (date.getHours() << 11) | (date.getMinutes() << 5) | Math.floor(date.getSeconds() / 2);
  const day = ((date.getFullYear() - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate();
  return { time, day };
}

function header(size) {
  const buffer = new ArrayBuffer(size);
  return { bytes: new Uint8Array(buffer), view: new DataView(buffer) };
}

const MAX_ZIP32 = 0xffffffff;

/**
 * A zip Blob of entries [{path, data: Uint8Array}], stored as they are. Paths use "/" and are relative
 * (a leading "/" or a ".." would be refused by the server's ingest anyway, so they are refused here).
 */
export function storeZip(entries, now = new Date()) {
  const encoder = new TextEncoder();
  const { time, day } = dosDateTime(now);
  const parts = [];
  const central = [];
  let offset = 0;
  for (const entry of entries) {
    const path = entry.path.replace(/\\/g, "/");
    if (path.startsWith("/") || path.split("/").includes("..")) throw new Error(`unsafe path in zip: ${path}`);
    const name = encoder.encode(path);
    const data = entry.data;
    const crc = crc32(data);
    if (data.length >= MAX_ZIP32 || offset >= MAX_ZIP32) throw new Error("the folder is too large to zip (over 4 GB)");
    const local = header(30);
    local.view.setUint32(0, 0x04034b50, true); // local file header signature
    local.view.setUint16(4, 20, true); // version needed: 2.0
    local.view.setUint16(6, 0x0800, true); // flags: UTF-8 names
    local.view.setUint16(8, 0, true); // method: STORE
    local.view.setUint16(10, time, true);
    local.view.setUint16(12, day, true);
    local.view.setUint32(14, crc, true);
    local.view.setUint32(18, data.length, true); // compressed size
    local.view.setUint32(22, data.length, true); // uncompressed size
    local.view.setUint16(26, name.length, true);
    local.view.setUint16(28, 0, true); // extra length
    parts.push(local.bytes, name, data);

    const dir = header(46);
    dir.view.setUint32(0, 0x02014b50, true); // central directory header signature
    dir.view.setUint16(4, 20, true); // version made by
    dir.view.setUint16(6, 20, true); // version needed
    dir.view.setUint16(8, 0x0800, true);
    dir.view.setUint16(10, 0, true);
    dir.view.setUint16(12, time, true);
    dir.view.setUint16(14, day, true);
    dir.view.setUint32(16, crc, true);
    dir.view.setUint32(20, data.length, true);
    dir.view.setUint32(24, data.length, true);
    dir.view.setUint16(28, name.length, true);
    // extra, comment, disk number, internal attributes: 0; external attributes: 0 (a regular file)
    dir.view.setUint32(42, offset, true); // where the local header starts
    central.push(dir.bytes, name);
    offset += 30 + name.length + data.length;
  }
  const centralSize = central.reduce((total, part) => total + part.length, 0);
  if (entries.length > 0xffff) throw new Error("too many files to zip (over 65535)");
  const end = header(22);
  end.view.setUint32(0, 0x06054b50, true); // end of central directory signature
  end.view.setUint16(8, entries.length, true); // entries on this disk
  end.view.setUint16(10, entries.length, true); // entries in total
  end.view.setUint32(12, centralSize, true);
  end.view.setUint32(16, offset, true); // where the central directory starts
  return new Blob([...parts, ...central, end.bytes], { type: "application/zip" });
}

const IMAGE_SUFFIXES = /\.(jpe?g|png|webp|bmp|gif)$/i;
const MANIFESTS = new Set(["manifest.csv", "manifest.jsonl"]);

/**
 * The files of a picked folder (webkitdirectory) as zip entries, keeping the paths below the folder
 * itself: "digits/train/zero/1.png" -> "train/zero/1.png". Only images and a manifest; hidden files
 * and folders are left out, like the SDK's folder upload.
 */
export async function folderEntries(files, onRead = () => {}) {
  const entries = [];
  let index = 0;
  for (const file of files) {
    index += 1;
    const relative = file.webkitRelativePath || file.name;
    const parts = relative.split("/").filter(Boolean);
    const inner = parts.length > 1 ? parts.slice(1) : parts;
    if (inner.some((part) => part.startsWith("."))) continue;
    const path = inner.join("/");
    const base = inner[inner.length - 1];
    if (!IMAGE_SUFFIXES.test(base) && !MANIFESTS.has(path)) continue;
    entries.push({ path, data: new Uint8Array(await file.arrayBuffer()) });
    onRead(index, files.length);
  }
  return entries;
}
