/** Makes `remote: "local"` run jobs in this sandbox (imported by tsight's main entry). */
import { registerLocalExecutor } from "../../remote/local.js";
import { SandboxExecutor } from "./index.js";

registerLocalExecutor(new SandboxExecutor());
