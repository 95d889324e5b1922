// A hessd client in Node.js, from proto/ alone: Hessian, HessianChunked and
// StreamHessian, and an error's google.rpc.Status details.
//
//   npm ci
//   node client.js 127.0.0.1:50051 demo '[[0.1, 0.2, ...], [...]]'
//
// Prints one JSON object: each result's dtype, shape and raw little-endian
// bytes (base64), and the decoded errors.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTO_ROOT = process.env.HESSD_PROTO_ROOT || path.join(__dirname, "..", "..", "proto");
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

// Tensors travel as raw little-endian bytes plus dtype and shape.
const ITEMSIZE = { DATA_TYPE_FLOAT32: 4, DATA_TYPE_FLOAT64: 8 };

function encodeFloat32(rows) {
  const flat = Float32Array.from(rows.flat());
  return {
    dtype: "DATA_TYPE_FLOAT32",
    shape: [rows.length, rows[0].length],
    data: Buffer.from(flat.buffer, flat.byteOffset, flat.byteLength),
  };
}

function describe(dtype, shape, data) {
  const expected = shape.reduce((n, size) => n * Number(size), 1) * ITEMSIZE[dtype];
  if (data.length !== expected) throw new Error(`expected ${expected} bytes, got ${data.length}`);
  return { dtype, shape: shape.map(Number), data: data.toString("base64") };
}

// google.rpc.Status and its details (ErrorInfo, BadRequest) from the carried protos.
const statusRoot = new protobuf.Root();
statusRoot.resolvePath = (origin, target) =>
  target.startsWith("google/protobuf/") ? protobuf.util.path.resolve(origin, target) : path.join(PROTO_ROOT, target);
statusRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = statusRoot.lookupType("google.rpc.Status");

function decodeDetails(details) {
  return details.map((any) => {
    const typeUrl = any.type_url || any.typeUrl;
    const type = statusRoot.lookupType(typeUrl.slice(typeUrl.lastIndexOf("/") + 1));
    return { type: type.fullName.slice(1), ...type.toObject(type.decode(any.value)) };
  });
}

function statusOfError(error) {
  const [raw] = error.metadata.get("grpc-status-details-bin");
  const status = raw ? Status.toObject(Status.decode(raw), { bytes: Buffer }) : { details: [] };
  return { code: error.code, message: error.details, details: decodeDetails(status.details) };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, (error, reply) => (error ? reject(error) : resolve(reply)))
  );
}

function chunked(client, request) {
  return new Promise((resolve, reject) => {
    let buffer = null;
    let header = null;
    client
      .HessianChunked(request)
      .on("data", (chunk) => {
        if (buffer === null) {
          header = chunk;
          const size = chunk.shape.reduce((n, s) => n * Number(s), 1) * ITEMSIZE[chunk.dtype];
          buffer = Buffer.alloc(size);
        }
        chunk.data.copy(buffer, Number(chunk.offset));
      })
      .on("error", reject)
      .on("end", () => resolve(describe(header.dtype, header.shape, buffer)));
  });
}

function streamed(client, requests) {
  return new Promise((resolve, reject) => {
    const replies = [];
    const call = client.StreamHessian();
    call.on("data", (reply) => {
      if (reply.result === "error") {
        const error = reply.error;
        replies.push({ index: Number(reply.index), error: { code: error.code, message: error.message, details: decodeDetails(error.details) } });
      } else {
        const t = reply.hessian;
        replies.push({ index: Number(reply.index), hessian: describe(t.dtype, t.shape, t.data) });
      }
    });
    call.on("error", reject);
    call.on("end", () => resolve(replies));
    requests.forEach((request) => call.write(request));
    call.end();
  });
}

async function main() {
  const [target, model, xJson] = process.argv.slice(2);
  const definition = protoLoader.loadSync("hessd/v1/hessian_service.proto", { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] });
  const hessd = grpc.loadPackageDefinition(definition).hessd.v1;
  const client = new hessd.HessianService(target, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });
  const request = { model_name: model, x: { x: encodeFloat32(JSON.parse(xJson)) } };
  const badRequest = { model_name: model, x: { x: encodeFloat32([[1, 2, 3]]) } };

  const reply = await unary(client, "Hessian", request);
  const output = {
    hessian: describe(reply.hessian.dtype, reply.hessian.shape, reply.hessian.data),
    model_version: reply.model_version,
    chunked: await chunked(client, request),
    stream: await streamed(client, [request, badRequest, request]),
  };
  try {
    await unary(client, "Hessian", badRequest);
  } catch (error) {
    output.error = statusOfError(error);
  }
  client.close();
  process.stdout.write(JSON.stringify(output) + "\n");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
