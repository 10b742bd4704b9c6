// Swagger UI from the bundled files (no CDN), in a file of its own so the page keeps a CSP without inline script.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  validatorUrl: null,  // the public validator is online; this page must not reach out
});
