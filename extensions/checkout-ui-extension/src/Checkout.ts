// storeflow upsell in checkout: the cart's products go to the recommender with the checkout's session
// token (verified by storeflow as Shopify's JWT: audience = the app, shop = the token's dest); what comes
// back (product gids, never one already in the cart nor one sold out) is looked up in the Storefront API
// for a title and an available variant, and shown with an "Add" button. Impressions and the product added
// are posted to /v1/feedback beside the endpoint, which joins them to the recommendation's log line.
import {
  extension,
  BlockStack,
  Button,
  Heading,
  InlineLayout,
  Text,
} from "@shopify/ui-extensions/checkout";

const GID = "gid://shopify/Product/";

interface Recommendation {
  predictions: { products: string[] }[];
  model_version?: string;
  request_id?: string;
}

interface ProductNode {
  id: string;
  title: string;
  variants: { nodes: { id: string; availableForSale: boolean }[] };
}

const PRODUCTS_QUERY = `query storeflowUpsell($ids: [ID!]!) {
  nodes(ids: $ids) { ... on Product { id title variants(first: 1) { nodes { id availableForSale } } } }
}`;

export default extension("purchase.checkout.block.render", (root, api) => {
  const endpoint = String(api.settings.current.endpoint ?? "");
  const count = Math.min(Math.max(Number(api.settings.current.count ?? 3), 1), 10);
  const inCart = [...new Set(api.lines.current.map((line) => line.merchandise.product.id))];
  if (!endpoint.startsWith("https://") || inCart.length === 0) return;

  async function call(url: string, body: unknown): Promise<Response> {
    const token = await api.sessionToken.get();
    return fetch(url, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  const feedbackUrl = endpoint.replace(/\/v1\/models\/[^/]+:predict$/, "/v1/feedback");

  async function show(): Promise<void> {
    const res = await call(endpoint, { instances: [{ products: inCart.filter((id) => id.startsWith(GID)), k: count }] });
    if (!res.ok) return; // checkout goes on without the block
    const answer = (await res.json()) as Recommendation;
    const ids = answer.predictions[0]?.products ?? [];
    if (ids.length === 0) return;
    const found = await api.query<{ nodes: (ProductNode | null)[] }>(PRODUCTS_QUERY, { variables: { ids } });
    const products = (found.data?.nodes ?? []).filter(
      (node): node is ProductNode => node !== null && node.variants.nodes[0]?.availableForSale === true);
    if (products.length === 0) return;
    const shown = products.map((product) => product.id);
    const feedback = (event: string, product?: string) =>
      call(feedbackUrl, { event, products: shown, product, page: inCart, model_version: answer.model_version,
                          request_id: answer.request_id }).catch(() => undefined);

    const rows = products.map((product) =>
      root.createComponent(InlineLayout, { columns: ["fill", "auto"], spacing: "base", blockAlignment: "center" }, [
        root.createComponent(Text, {}, product.title),
        root.createComponent(Button, {
          kind: "secondary",
          onPress: async () => {
            const result = await api.applyCartLinesChange({
              type: "addCartLine", merchandiseId: product.variants.nodes[0].id, quantity: 1 });
            if (result.type === "success") await feedback("click", product.id);
          },
        }, "Add"),
      ]));
    root.appendChild(root.createComponent(BlockStack, { spacing: "base" }, [
      root.createComponent(Heading, { level: 2 }, "You may also like"),
      ...rows,
    ]));
    await feedback("impression");
  }

  show().catch(() => undefined);
});
