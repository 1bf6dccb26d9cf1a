/// <reference path="./interfaces/wasmgate-gateway-cluster.d.ts" />
/// <reference path="./interfaces/wasmgate-gateway-handler.d.ts" />
/// <reference path="./interfaces/wasmgate-gateway-host.d.ts" />
/// <reference path="./interfaces/wasmgate-gateway-types.d.ts" />
declare module 'wasmgate:gateway/handler-script@0.1.0' {
  export type * as WasmgateGatewayCluster010 from 'wasmgate:gateway/cluster@0.1.0'; // import wasmgate:gateway/cluster@0.1.0
  export type * as WasmgateGatewayHost010 from 'wasmgate:gateway/host@0.1.0'; // import wasmgate:gateway/host@0.1.0
  export type * as WasmgateGatewayTypes010 from 'wasmgate:gateway/types@0.1.0'; // import wasmgate:gateway/types@0.1.0
  export * as handler from 'wasmgate:gateway/handler@0.1.0'; // export wasmgate:gateway/handler@0.1.0
}
