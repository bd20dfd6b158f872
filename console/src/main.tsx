import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import "uplot/dist/uPlot.min.css";
import "./styles.css";
import { completeSignIn } from "./auth";
import { App } from "./App";

// A page restored from the back-forward cache would show data of a session that may be gone:
// load it afresh instead (which signs in again).
window.addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});

const root = createRoot(document.getElementById("root")!);
void completeSignIn().then((outcome) => {
  if ("returnTo" in outcome) history.replaceState(null, "", outcome.returnTo);
  root.render(
    <StrictMode>
      <App signedOut={"reason" in outcome ? outcome : null} />
    </StrictMode>,
  );
});
