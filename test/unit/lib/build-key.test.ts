// The CMake options that keep AVX512-FP16 arithmetic out of the build (README, "How the build works").
import assert from "node:assert/strict";
import { cpuCmakeOptions } from "../../../lib/build-key.js";

// the flags of the Xeon this was measured on (AVX512-FP16, no AMX), and of an AVX2-only EPYC
const xeon = "flags\t\t: fpu sse4_2 f16c fma bmi2 avx avx2 avx_vnni avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi "
    + "avx512_vnni avx512_bf16 avx512_fp16";
const epyc = "flags\t\t: fpu sse4_2 f16c fma bmi2 avx avx2";

describe("cpuCmakeOptions", function () {
    it("names every instruction set but F16 arithmetic on a CPU with AVX512-FP16", function () {
        assert.deepEqual(cpuCmakeOptions(xeon, "x64"), {
            GGML_NATIVE: "OFF", GGML_SSE42: "ON", GGML_F16C: "ON", GGML_FMA: "ON", GGML_BMI2: "ON", GGML_AVX: "ON", GGML_AVX2: "ON",
            GGML_AVX_VNNI: "ON", GGML_AVX512: "ON", GGML_AVX512_VBMI: "ON", GGML_AVX512_VNNI: "ON", GGML_AVX512_BF16: "ON",
            GGML_AMX_TILE: "OFF", GGML_AMX_INT8: "OFF", GGML_AMX_BF16: "OFF"
        });
    });

    it("AVX-512 needs all five of its base sets", function () {
        assert.equal(cpuCmakeOptions(xeon.replace(" avx512cd", ""), "x64").GGML_AVX512, "OFF");
    });

    it("leaves -march=native alone elsewhere: without AVX512-FP16, on other architectures, without /proc/cpuinfo", function () {
        assert.deepEqual(cpuCmakeOptions(epyc, "x64"), {});
        assert.deepEqual(cpuCmakeOptions(xeon, "arm64"), {});
        assert.deepEqual(cpuCmakeOptions(null, "x64"), {});
    });
});
