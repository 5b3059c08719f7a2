// What the scripts that configure llama.cpp with CMake share: finding tools, and the configure command with
// ccache and Ninja when the machine has them (ccache makes a rebuild take seconds).
import { spawnSync } from "node:child_process";

export function commandExists(cmd: string): boolean {
    return spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).status === 0;
}

/** CMake's compiler launcher options for ccache, or none when it is not installed. */
export function ccacheLauncherOptions(): Record<string, string> {
    return commandExists("ccache") ? { CMAKE_C_COMPILER_LAUNCHER: "ccache", CMAKE_CXX_COMPILER_LAUNCHER: "ccache" } : {};
}

/** The arguments of `cmake` that configure `src` into `build` with these -D options, ccache and Ninja when present. */
export function cmakeConfigureArgs(src: string, build: string, options: Record<string, string>): string[] {
    const generator = commandExists("ninja") ? ["-G", "Ninja"] : [];
    return ["-S", src, "-B", build, ...generator,
        ...Object.entries({ ...options, ...ccacheLauncherOptions() }).map(([name, value]) => `-D${name}=${value}`)];
}
