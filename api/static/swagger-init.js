// Starts Swagger UI on the service's own OpenAPI document (a file, so the page needs no
// inline script and its Content-Security-Policy can forbid them).
window.ui = SwaggerUIBundle({
  url: "/schema/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
});
