// Swagger UI for /docs.json, from the copy BentoML ships (/static_content); no outside requests.
"use strict";

window.ui = SwaggerUIBundle({
  url: "docs.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // the default sends the spec to validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
