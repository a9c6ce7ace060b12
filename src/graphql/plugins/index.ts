// Schema plugins of our own, in the order they apply.
export const extraPlugins: GraphileConfig.Plugin[] = [];
